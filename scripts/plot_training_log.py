"""Plot the built-in models' training loss log (docs/models-training-log.json) as a PNG."""

from __future__ import annotations

import sys
from pathlib import Path


def plot_log(log_path: Path, png_path: Path) -> Path:
    """One line per model: next-token loss (router loss excluded) against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from moeless_cli.fileio import read_json

    log = read_json(log_path, "training log")
    tokens_per_step = log["config"]["batch_rows"] * log["config"]["seq_len"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in log.items():
        if name == "config" or not rows:
            continue
        ax.plot([r["step"] * tokens_per_step / 1e6 for r in rows], [r["lm_loss"] for r in rows], label=name)
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("next-token cross-entropy (nats)")
    ax.set_title("Built-in moeless models: training loss (balanced prose/code/math/chat)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


if __name__ == "__main__":
    log = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "docs/models-training-log.json"
    print(plot_log(log, log.with_suffix(".png")))

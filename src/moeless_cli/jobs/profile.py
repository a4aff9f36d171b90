"""The profile job: a model and a workload in, a profile directory and its summary out.

`record_profile` runs the model with routing hooks (`profiling/record.py`); `import_profile` turns
load counts recorded elsewhere (a CSV) into a load-only profile. Both return a ProfileResult whose
`to_json()` is the `moeless profile --json` document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from moeless_cli.errors import MoelessError

if TYPE_CHECKING:  # the runner imports torch; `profile import` and `--help` stay without it
    import numpy as np

    from moeless_cli.profiling.runner import ProfileOptions

DEFAULT_MODEL = "tiny-mixtral"
SMALL_MODEL_HIDDEN = 1024  # below this width a CPU forward is many tiny matmuls: one thread is fastest
DATA_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".txt"}


def _default_options() -> ProfileOptions:
    from moeless_cli.profiling.runner import ProfileOptions

    return ProfileOptions()


@dataclass(frozen=True)
class ProfileRequest:
    model: str = DEFAULT_MODEL  # built-in model name or local HF checkpoint directory
    dataset: str = "mix"  # built-in dataset, a local data file, or a hub dataset name
    options: ProfileOptions = field(default_factory=_default_options)  # prompts, batches, decode steps, samples
    text_field: str | None = None  # field holding the prompt; None: the loader's usual names
    device: str = "cpu"  # torch device the model runs on
    dtype: str | None = None  # float32, bfloat16, float16 or auto; None: float32 on CPU, else the checkpoint's
    threads: int | None = None  # torch CPU threads; None: auto (see choose_threads), 0: torch's choice
    out: Path | None = None  # profile directory; None: profiles/<model>-<dataset>/
    force: bool = False  # replace a profile already at `out` (a folder holding other files never is)

    def validate(self) -> None:
        from moeless_cli.checks import optional_integer

        if self.threads is not None and self.threads < 0:
            raise MoelessError(f"--threads must be 0 (torch's choice) or more (got {self.threads})")
        optional_integer("--threads", self.threads, 0, 4096)
        self.options.validate()

    def out_dir(self) -> Path:
        """--out, or profiles/<model>-<dataset>/: a checkpoint directory's name, a data file's name without suffix."""
        if self.out is not None:
            return Path(self.out)
        model_name = Path(str(self.model).rstrip("/")).name or "model"
        data = Path(str(self.dataset).rstrip("/"))
        data_name = data.stem if data.suffix.lower() in DATA_SUFFIXES else data.name
        return Path("profiles") / f"{model_name}-{data_name or 'dataset'}"


@dataclass(frozen=True)
class ImportRequest:
    files: tuple[Path, ...]  # a CSV (layer,expert,count), SGLang recorder dumps (one per rank) or a vLLM load window
    format: str = "auto"  # auto (from the files), csv, sglang or vllm (interop.IMPORT_FORMATS)
    where: tuple[str, ...] = ()  # CSV only: keep rows where COLUMN=VALUE
    num_experts: int | None = None  # experts per layer, if above the CSV's highest id + 1
    top_k: int | None = None  # experts per token of the model the loads came from
    out: Path | None = None  # profile directory; None: profiles/<csv name>[-<filters>]/
    force: bool = False  # replace a profile already at `out` (a folder holding other files never is)

    def validate(self) -> None:
        from moeless_cli.checks import MAX_EXPERTS, optional_integer

        optional_integer("--num-experts", self.num_experts, 1, MAX_EXPERTS)
        optional_integer("--top-k", self.top_k, 1, MAX_EXPERTS)


@dataclass(frozen=True)
class LayerLoadSummary:
    layer: int  # the model's layer index of this MoE layer
    max: float  # tokens of the busiest expert, over the whole profile
    mean: float  # tokens per expert
    imbalance: float  # max / mean (0 for an idle layer)
    hottest: list[int]  # the three busiest experts, busiest first


@dataclass(frozen=True)
class ProfileResult:
    out: Path  # the profile directory written
    imported: bool  # a load-only profile from a CSV (the JSON says "kind": "imported")
    layers: int  # MoE layers
    experts: int  # experts per layer
    top_k: int | None  # experts per token (None: an import that was not told)
    iterations: int  # forward passes recorded
    tokens: int  # tokens routed (0 for imports)
    requests: int  # prompts run
    router_samples: int  # tokens whose router inputs were kept
    model: str  # the model's id
    domains: list[str]  # prompt domains of the workload
    forward_seconds: float | None  # time in forward passes (recorded profiles)
    expert_seconds_per_token: float | None  # one expert's measured time per token
    per_layer: list[LayerLoadSummary]
    import_notes: dict[str, Any] = field(default_factory=dict)  # an engine import: its format, the dense rows
    # dropped and notes for the user (interop.import_notes); empty otherwise

    def to_json(self) -> dict[str, Any]:
        summary = asdict(self)
        del summary["out"], summary["imported"], summary["import_notes"]
        return {"out": str(self.out), **({"kind": "imported"} if self.imported else {}), **summary,
                **self.import_notes}


def summarize(out: Path, manifest: dict[str, Any], layer_load: np.ndarray, imported: bool = False) -> ProfileResult:
    """The result of a profile from its manifest and layer_load: [layers, experts] summed over iterations."""
    import numpy as np

    layer_ids = manifest.get("moe_layer_ids", list(range(len(layer_load))))
    per_layer = []
    for j, row in enumerate(layer_load):
        mean = float(row.mean())
        per_layer.append(LayerLoadSummary(
            layer=int(layer_ids[j]), max=float(row.max()), mean=mean,
            imbalance=float(row.max() / mean) if mean > 0 else 0.0,
            hottest=[int(e) for e in np.argsort(-row, kind="stable")[:3]],
        ))
    sizes = manifest.get("sizes", {})
    timings = manifest.get("timings") or {}
    return ProfileResult(
        out=out, imported=imported, layers=manifest["num_layers"], experts=manifest["num_experts"],
        top_k=manifest["top_k"], iterations=manifest["iterations"], tokens=sizes.get("tokens", 0),
        requests=sizes.get("requests", 0), router_samples=sizes.get("samples", 0), model=manifest["model"]["id"],
        domains=(manifest.get("dataset") or {}).get("domains", []),
        forward_seconds=timings.get("forward_seconds_total"),
        expert_seconds_per_token=(timings.get("expert") or {}).get("seconds_per_token"),
        per_layer=per_layer,
    )


def choose_threads(model: str, device: str, threads: int | None) -> int | None:
    """torch CPU threads for the run: None = auto (1 for small models on CPU), 0 = torch's default.

    Tiny models gain nothing from intra-op threads, and on a shared machine OpenMP threads that
    spin-wait for a busy core made decode passes ~30x slower in our measurements.
    """
    if threads is not None:
        return threads or None
    if device != "cpu":
        return None
    from moeless_cli.models.loading import read_text_config, resolve_model_path

    hidden = read_text_config(resolve_model_path(model)).get("hidden_size") or 0
    return 1 if isinstance(hidden, int) and hidden < SMALL_MODEL_HIDDEN else None


def record_profile(request: ProfileRequest, progress: Callable[[int], Any] | None = None,
                   on_pass: Callable[[], None] | None = None) -> ProfileResult:
    """Profile request.model on request.dataset into a profile directory.

    Inputs are checked (options, output location, model, dataset) before the model runs.
    `progress(total)` is called once with the number of forward passes to expect, `on_pass()` after each.
    """
    from moeless_cli.profiling import save_profile
    from moeless_cli.profiling.format import check_profile_out
    from moeless_cli.profiling.record import record_routing
    from moeless_cli.workloads.prompts import load_prompts

    request.validate()
    out = request.out_dir()
    check_profile_out(out, request.force)  # fail before minutes of work, not after
    options = request.options
    prompts = load_prompts(request.dataset, text_field=request.text_field, num_prompts=options.num_prompts,
                           seed=options.seed)
    threads = choose_threads(request.model, request.device, request.threads)
    manifest, arrays = record_routing(request.model, prompts, options, request.device, request.dtype, threads,
                                      progress, on_pass)
    manifest["dataset"]["text_field"] = request.text_field
    save_profile(out, manifest, arrays, request.force)
    return summarize(out, manifest, arrays["load"].sum(axis=0))


def import_profile(request: ImportRequest) -> ProfileResult:
    """Write a load profile from a CSV's filtered, summed counts (one iteration) or from an engine's
    load records (one iteration per recorded pass or window sample)."""
    from dataclasses import replace

    from moeless_cli.interop import import_loads, import_notes
    from moeless_cli.loads_csv import parse_where
    from moeless_cli.profiling import load_profile

    request.validate()
    out, manifest = import_loads(list(request.files), request.format, parse_where(list(request.where)),
                                 num_experts=request.num_experts, top_k=request.top_k, out=request.out,
                                 force=request.force)
    result = summarize(out, manifest, load_profile(out).layer_load(), imported=True)
    return replace(result, import_notes=import_notes(manifest))
"""History baselines: predict an iteration's expert loads from the loads of earlier iterations."""

from __future__ import annotations

import numpy as np

from moeless_cli.predictor.metrics import load_fractions

EMA_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # grid the EMA baseline's smoothing is chosen from


def ema_prior(load: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average of earlier iterations' load fractions.

    load: [iterations, experts] one layer's profiled counts -> [iterations, experts] fractions;
    row i only uses rows < i (row 0, with no history, is uniform). alpha = 1 is "last iteration".
    Fractions rather than counts, because prefill and decode iterations differ in size by orders
    of magnitude and only the shape of the distribution is predicted.
    """
    fractions = load_fractions(load)
    prior = np.empty_like(fractions)
    state = np.full(fractions.shape[1], 1.0 / fractions.shape[1])
    seen = False
    for i in range(fractions.shape[0]):
        prior[i] = state
        if load[i].sum() > 0:
            state = fractions[i] if not seen else (1.0 - alpha) * state + alpha * fractions[i]
            seen = True
    return prior

"""Expert scaling and placement: pure planning code (numpy, pulp, networkx; no torch, no files).

Glossary (the words every module here uses):
- **logical expert** `e` in `0..E-1`: one expert of one MoE layer of the model.
- **replica**: one loaded copy of a logical expert's weights on one GPU — in MoEless terms one warm
  serverless *function instance*. Every logical expert has at least one replica per layer.
- **physical slot**: room for one replica on a GPU. A GPU has `slots_per_gpu` slots per layer
  (derived from GPU memory / expert size when given in bytes).
- **GPU** `g` in `0..G-1`: an expert-parallel rank. GPUs are grouped into **nodes** of G/N GPUs;
  links inside a node are fast (NVLink), links between nodes slower (network).
- **share**: the fraction of its logical expert's tokens that a replica serves. The shares of an
  expert's replicas sum to 1. EPLB and the paper split equally; `ilp` may split unequally, which is
  what lets it balance GPUs (not only experts) with few replicas.
- **load**: token-to-expert assignments counted over a window, `load: [layers, experts]`.
- **GPU load**: sum over the replicas on a GPU of share * expert load; the MoE layer waits for the
  largest one (the straggler). **imbalance** = max / mean GPU load (1.0 is perfect).

Policy (what goes where) lives here; the code that moves weights lives in serving.
"""

from moeless_cli.planning.plan import LayerInfo, LayerPlan, Plan, PlanningProblem, SolveResult
from moeless_cli.planning.solvers import SOLVERS, solve

__all__ = ["LayerInfo", "LayerPlan", "Plan", "PlanningProblem", "SOLVERS", "SolveResult", "solve"]

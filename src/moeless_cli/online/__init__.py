"""The online control plane shared by `serve` (real torch runtime) and the cluster simulator.

Pure numpy: no torch, no files, no CLI. batching (request scheduling), functions (expert function
lifecycle and accounting), policies (the `Policy` protocol: what must be warm, how tokens spread),
report. The dispatch arithmetic the policies use is shared with the planner: `planning/dispatch.py`.
"""

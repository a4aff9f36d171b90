"""moeless: serverless-style expert scaling and placement for MoE LLM serving.

Pipeline, one stage per subpackage:
  profiling/  run a model over a workload, record expert activations   (moeless profile)
  predictor/  layer-aware expert-load predictors                        (moeless train-predictor)
  planning/   scaling + placement solvers, pure code                    (moeless plan)
  serving/    expert-parallel runtime with serverless expert functions  (moeless serve)
  bench/      every system side by side                                 (moeless bench)
"""

__version__ = "0.1.0"

"""Expert-load predictors: tell the scaler, d layers ahead, how many tokens each expert will get.

Glossary:
- **target layer** t: the MoE layer whose per-expert load is predicted (indices count MoE layers
  only, as in profiles); **input layer** t - d: the layer whose router input the predictor reads;
  **distance** d >= 1: how many layers ahead the prediction is made.
- **gate copy**: a linear map of the target layer's gate shape `[experts, hidden]`, initialised
  from the target gate's weights and applied to the input layer's router input.
- **moeless-paper**: the published layer-aware method (a gate copy fine-tuned only where its top-k
  recall is below the threshold); **reused-gate**: the unmodified target gate on the input layer's
  hidden states (Mixtral-offloading); **ema** / **last**: history of the layer's observed loads;
  **moeless**: a gate copy trained on every layer for top-k sets and batch loads, its soft counts
  blended with the EMA prior by a per-layer validated weight.
- **batch**: the tokens of one profiled iteration; loads are compared as per-expert fractions.

Modules: metrics (pure numpy), samples (split by request), gates, history, train, evaluate,
pipeline (train + score all layers), store (the predictor file and `load_predictor`), run (the
torch-level steps of the predictor job, `jobs/predictor.py`). torch is imported by
train/pipeline/store/run only.
"""

__all__ = ["load_predictor", "LoadPredictor"]


def __getattr__(name: str):
    if name in __all__:
        from moeless_cli.predictor import store

        return getattr(store, name)
    raise AttributeError(name)

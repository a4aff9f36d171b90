"""The reference a served run must equal: plain transformers' greedy tokens for the same workload.

Each request is generated alone (no padding) for exactly its output length, as serve generates it:
EOS does not stop a request, and it may be generated like any other token. So `generate` runs with
`eos_token_id=None` (no stopping), not `min_new_tokens` (which forbids EOS: on tiny-olmoe one prompt
out of 8 had EOS as its greedy next token, and the two references parted there). Tests and
`benchmarks/gpu_smoke.py` compare `report["outputs"]` with this.
"""

from __future__ import annotations

from typing import Any


def reference_outputs(model: Any, workload: Any) -> dict[str, list[int]]:
    """model: a plain transformers causal LM (eval mode, on its device); workload: serving.setup's
    Workload. Returns request id (as the report's string key) -> the new token ids."""
    import torch

    out: dict[str, list[int]] = {}
    with torch.no_grad():
        for request in workload.requests:
            ids = torch.tensor([workload.prompts[request.id]], device=model.device)
            generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=request.output_tokens, eos_token_id=None, pad_token_id=0)
            new = generated[0, ids.shape[1]:].tolist()
            assert len(new) == request.output_tokens, "generate stopped early although EOS was off"
            out[str(request.id)] = new
    return out

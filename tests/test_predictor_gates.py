"""Router weights copied out of real (tiny) checkpoints reproduce each family's own top-k choice."""

import pytest
import torch
from tiny_models import cached_tiny_checkpoint, single_thread_torch

from moeless_cli.models import load_moe_model
from moeless_cli.predictor.gates import gates_from_model, select_topk


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss", "granitemoe", "ernie4_5_moe"])
def test_gate_copy_routes_like_the_router(family):
    with single_thread_torch():
        loaded = load_moe_model(cached_tiny_checkpoint(family))
        generator = torch.Generator().manual_seed(0)
        for index in range(loaded.num_moe_layers):  # random selection biases, so they matter
            for name, tensor in [*loaded.router(index).named_buffers(), *loaded.router(index).named_parameters()]:
                if name.endswith("e_score_correction_bias"):
                    with torch.no_grad():
                        tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.2)
        gates = gates_from_model(loaded)
        assert gates.weight.shape == (loaded.num_moe_layers, loaded.num_experts, loaded.hidden_size)
        x = torch.randn(64, loaded.hidden_size, generator=generator)
        for index in range(gates.num_layers):
            with torch.no_grad():
                expected = loaded.router(index)(x)[loaded.adapter.indices_position]
            logits = x @ torch.from_numpy(gates.weight[index]).T
            if gates.bias is not None:
                logits = logits + torch.from_numpy(gates.bias[index])
            correction = None if gates.correction is None else torch.from_numpy(gates.correction[index])
            ids = select_topk(logits, gates.top_k, gates.score, correction, gates.num_groups, gates.top_groups)
            assert torch.equal(ids.sort(dim=-1).values, expected.sort(dim=-1).values), (family, index)

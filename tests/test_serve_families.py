"""Every MoE family moeless claims is served lossless: `moeless serve` (local backend, 2-4 CPU
workers) gives plain transformers' greedy tokens on the same prompts; the experts' combine is bit
for bit the model's own (grouped_mm and eager, fp32 and bf16); Llama-4's blocks are adapted for
serving and put back; two families under `--backend dist`."""

from __future__ import annotations

import json

import pytest

from tiny_models import (cached_tiny_checkpoint, make_tiny_checkpoint, plain_greedy_outputs, single_thread_torch,
                         tiny_top_k)

SMALL = ("--max-requests", "4", "--max-output-tokens", "4", "--max-prompt-tokens", "12", "--time-scale", "200")

# Family -> tiny-config overrides that switch on what is particular about its routing (the defaults
# of the shared tiny configs leave DeepSeek's expert groups off).
CLAIMED: dict[str, dict] = {
    "mixtral": {},
    "olmoe": {},
    "qwen3_moe": {"norm_topk_prob": True},
    "phimoe": {},  # sparsemixer router
    "qwen2_moe": {},  # gated shared expert
    "deepseek_v2": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=2.0),
    "deepseek_v3": dict(n_group=4, topk_group=2),  # sigmoid + correction bias, renormalised, x 2.5
    "gpt_oss": {},  # router bias, softmax over the kept k, clamped SwiGLU with biases, transposed weights
    "granitemoe": {},
    "granitemoeshared": {},
    "llama4_text": {},  # top-1 sigmoid, input scaled by the score, shared expert, dense layers between
    "llama4": {},  # Llama4ForConditionalGeneration's checkpoint: its text model
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> tiny checkpoint directory with the family's routing switched on."""
    made = {}

    def get(family: str):
        if family not in made:
            overrides = CLAIMED[family]
            made[family] = (make_tiny_checkpoint(family, tmp_path_factory.mktemp(family), **overrides)
                            if overrides else cached_tiny_checkpoint(family))
        return made[family]

    return get


def serve_json(cli, *args):
    result = cli("serve", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("family", sorted(CLAIMED))
def test_served_tokens_equal_plain_transformers(cli, checkpoints, family):
    model = checkpoints(family)
    workers = 2 + sorted(CLAIMED).index(family) % 3  # 2, 3 or 4 workers
    report = serve_json(cli, "--model", model, "--workers", workers, *SMALL)
    assert report["lossy"] is False and report["workers"] == workers
    assert report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
    assert report["outputs"] == plain_greedy_outputs(model, SMALL)
    assert report["functions_measured"]["created"] >= 8  # every expert really copied onto a worker
    assert report["functions"]["warm_hits"] > 0


def _one_replica_runtime(loaded, workers: int):
    """Every expert once (round-robin), so no expert's rows are split across replicas: CPU BLAS picks
    its kernel by row count, which would change fp32 bits (never the tokens) when a split happens."""
    from moeless_cli.online.fixed_plan import fixed_plan_policy
    from moeless_cli.planning.solvers.static import static_plan
    from moeless_cli.serving.runtime import ExpertParallelRuntime
    from moeless_cli.serving.workers import make_local_workers

    plan = static_plan(loaded.num_moe_layers, loaded.num_experts, workers)
    runtime = ExpertParallelRuntime(loaded, make_local_workers(workers, ["cpu"]), fixed_plan_policy(plan))
    runtime.install()
    return runtime


@pytest.mark.parametrize("family,dtype,top_k,implementation", [
    ("mixtral", "bfloat16", 2, "grouped_mm"),  # fp32 router weights: grouped_mm sums in fp32, rounds once
    ("deepseek_v3", "bfloat16", 2, "grouped_mm"),
    ("olmoe", "float32", 4, "grouped_mm"),  # top-k >= 3: slot order, not expert order
    ("qwen2_moe", "bfloat16", 4, "eager"),  # eager: one expert at a time in the hidden dtype
    ("gpt_oss", "bfloat16", 2, "grouped_mm"),
    ("llama4_text", "bfloat16", 1, None),  # its block runs every expert on all T rows (fp32 BLAS bits vary
    ("llama4_text", "bfloat16", 2, None),  # with the row count, so fp32 matches to ~1e-8, tokens exactly)
])
def test_layer_output_is_bit_identical(tmp_path, family, dtype, top_k, implementation):
    import torch

    from moeless_cli.models import load_moe_model

    key = "num_experts_per_tok"
    path = make_tiny_checkpoint(family, tmp_path / family, **{key: top_k, **CLAIMED[family]})
    loaded = load_moe_model(path, dtype=dtype)
    if implementation is not None:
        loaded.model.set_experts_implementation(implementation)
    ids = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with single_thread_torch(), torch.no_grad():
        plain = loaded.model(input_ids=ids, attention_mask=mask).logits
        runtime = _one_replica_runtime(loaded, 3)
        served = loaded.model(input_ids=ids, attention_mask=mask).logits
        runtime.uninstall()
        again = loaded.model(input_ids=ids, attention_mask=mask).logits
    assert plain.dtype == getattr(torch, dtype)
    assert torch.equal(served, plain), float((served.float() - plain.float()).abs().max())
    assert torch.equal(again, plain)  # uninstall gives the plain model back
    assert sum(1 for w in runtime.stats.layers[0].worker_s if w > 0) > 1


def test_llama4_blocks_are_adapted_while_serving_and_restored(tmp_path):
    from moeless_cli.models import load_moe_model

    loaded = load_moe_model(cached_tiny_checkpoint("llama4_text"))
    assert loaded.top_k == tiny_top_k("llama4_text") == 1 and loaded.moe_layer_ids == [1, 3]
    blocks = [loaded.decoder_layer(i).feed_forward for i in range(loaded.num_moe_layers)]
    runtime = _one_replica_runtime(loaded, 2)
    assert all("forward" in vars(b) for b in blocks)
    assert all(type(b.experts).__name__ == "_Experts" for b in blocks)
    assert runtime.math[0].is_transposed and runtime.math[0].has_gate and not runtime.math[0].has_bias
    runtime.uninstall()
    assert not any("forward" in vars(b) for b in blocks)
    assert all(type(b.experts).__name__ == "Llama4TextExperts" for b in blocks)


def test_llama4_profile_records_the_routers_top1(cli, tmp_path):
    """The router returns no ids: the profile's ids are the top-1 of the logits it returns."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from moeless_cli.profiling import load_profile

    path = cached_tiny_checkpoint("llama4")
    out = tmp_path / "prof"
    result = cli("profile", "--model", path, "--num-prompts", "2", "--batch-size", "1", "--max-new-tokens", "2",
                 "--max-prompt-tokens", "16", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    profile = load_profile(out)
    assert profile.manifest["model"]["family"] == "llama4" and profile.topk_ids.shape[1:] == (2, 1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rows = profile.token_request == 0
    order = np.argsort(profile.token_position[rows], kind="stable")
    ids = torch.tensor(profile.token_ids[rows][order])[None]
    with torch.no_grad():
        logits = model(input_ids=ids, output_router_logits=True).router_logits  # per MoE layer [seq, experts]
    for layer, layer_logits in enumerate(logits):
        assert np.array_equal(profile.topk_ids[rows][order][:, layer, 0], layer_logits.argmax(-1).numpy())


def test_llama4_layer_rule_and_composite_config(tmp_path):
    from moeless_cli.models import ADAPTERS
    from moeless_cli.models.loading import read_text_config

    adapter = ADAPTERS["llama4_text"]
    assert adapter.expected_moe_layers({"num_hidden_layers": 6, "interleave_moe_layer_step": 2}) == [1, 3, 5]
    assert adapter.expected_moe_layers({"num_hidden_layers": 4, "moe_layers": [3, 0, 9]}) == [0, 3]
    assert adapter.expected_moe_layers({"num_hidden_layers": 3}) == [0, 1, 2]
    composite = cached_tiny_checkpoint("llama4")
    text = read_text_config(composite)
    assert text["hidden_size"] == 32 and text["num_local_experts"] == 8
    assert ADAPTERS["llama4"].expected_moe_layers(json.loads((composite / "config.json").read_text())) == [1, 3]


def test_models_lists_llama4(cli):
    result = cli("models", "--json")
    assert result.exit_code == 0, result.output
    families = {f["model_type"]: f for f in json.loads(result.stdout)["families"]}
    assert families["llama4_text"]["architecture"] == "Llama4ForCausalLM"
    assert "sigmoid" in families["llama4"]["notes"] and "shared expert" in families["llama4"]["notes"]


@pytest.mark.slow
def test_dist_backend_serves_llama4_lossless(cli, checkpoints):
    """With tests/test_serve_dist.py's Mixtral, two families under dist (each run starts torchrun: ~35 s)."""
    model = checkpoints("llama4_text")
    report = serve_json(cli, "--model", model, "--backend", "dist", "--workers", "2", *SMALL)
    assert report["backend"] == "dist" and report["requests"] == {"submitted": 4, "completed": 4, "failed": 0}
    assert report["outputs"] == plain_greedy_outputs(model, SMALL)

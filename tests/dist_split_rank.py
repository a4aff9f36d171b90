"""One rank of the dist device-split test (tests/test_serve_runtime.py starts two, gloo on the CPU):
DistRuntime with a fixed plan offered as a replica table, greedy generate on a fixed batch; rank 0
writes the tokens and the per-layer decision times.

    python tests/dist_split_rank.py <model dir> <work dir>   (RANK, WORLD_SIZE, MASTER_* set)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(model: str, work: Path) -> None:
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(Path(__file__).parent))
    from test_serve_runtime import uneven_plan, with_device_table

    from moeless_cli.models import load_moe_model
    from moeless_cli.online.fixed_plan import fixed_plan_policy
    from moeless_cli.serving.dist import DistRuntime, RankPlace
    from moeless_cli.serving.workers import Worker

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo")
    loaded = load_moe_model(model)
    policy = with_device_table(fixed_plan_policy(uneven_plan(loaded.num_experts, loaded.num_moe_layers, world),
                                                 balanced=True), tile_tokens=2)
    workers = [Worker(i, "cpu") for i in range(world)]
    runtime = DistRuntime(loaded, workers, policy, None, 1, RankPlace(rank, world, work / "experts.safetensors",
                                                                      writes_store=rank == 0))
    runtime.install()
    ids = torch.randint(3, 300, (5, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = loaded.model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    if rank == 0:
        layers = runtime.stats.layers
        (work / "result.json").write_text(json.dumps({
            "tokens": out.tolist(), "decide_s": [t.decide_s for t in layers],
            "rank_counts": runtime.rank_counts.tolist(), "replicas_here": len(workers[rank].replicas),
            "device_tables": len(runtime._tables)}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

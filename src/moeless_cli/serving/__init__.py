"""The moeless serving runtime (torch): expert-parallel MoE blocks over workers, serverless replicas.

Glossary (see also moeless_cli.planning):
- **worker**: one expert-parallel rank: a device (cuda:i) or a virtual CPU worker. Workers sharing
  one device run one after another, each timed on its own.
- **replica / function instance**: one expert's weights of one MoE layer copied onto one worker.
- **host store**: the expert weights in host memory; creating a replica copies from it (a cold start).
- **dispatch**: after the model's own gate chose each token's top-k experts, sending each (token,
  expert) pair to one warm replica of that expert; **combine**: summing the experts' outputs back
  with the router weights, in the model's own order, so greedy tokens match plain transformers.

Modules: setup (options, the checks made before any weights load, the workload), experts
(per-expert math and the host store), workers, lifecycle (the real weight copies), runtime (the
expert-parallel block; fixed-plan policies for it are in online/policies.py), gather and engine (continuous batching), run (the
local backend's serve loop), dist, dist_main, launch, recovery and rundir (the torchrun backend:
partitioned expert memory, heartbeats, recovery from a lost rank). The report is
built by online/report.py; the entry point is the job, moeless_cli.jobs.serve.
"""

"""Hardware models: what one GPU can do and how GPUs are linked.

Peak numbers are vendor datasheet figures; "achievable" ones apply the efficiency noted per field
(large bf16 GEMMs reach ~60-70% of dense peak, streaming kernels ~80-90% of memory bandwidth, a
pinned-memory host copy ~75-80% of the PCIe link). They are assumptions of this simulator, not
measurements: calibrate against real mode where a GPU is available, or measure one GPU with
benchmarks/gpu_calibration.py and load its JSON with `hardware_from_calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from moeless_cli.errors import MoelessError, require_choice


@dataclass(frozen=True)
class Hardware:
    name: str
    description: str
    memory_gb: float  # device memory per GPU
    tflops: float  # achievable dense bf16/fp16 tensor TFLOP/s for expert GEMMs
    hbm_gbps: float  # achievable device memory bandwidth, GB/s (weight streaming)
    fast_link_gbps: float  # per-direction GB/s of the GPU-to-GPU fast link (NVLink)
    fast_link_group: int  # GPUs sharing fast links (2: pairwise bridges; 8: an NVSwitch node)
    pcie_gbps: float  # per-direction GB/s GPU-to-GPU over PCIe (peers without a fast link)
    host_gbps: float  # achievable host-to-device copy bandwidth (cold starts from host memory)
    network_gbps: float  # per-GPU GB/s between nodes
    gpus_per_node: int  # GPUs in one node
    usd_per_gpu_hour: float  # rough on-demand cloud price (2025), for the usd cost fields
    layer_fixed_s: float = 0.0  # fixed seconds per MoE layer besides experts and all-to-all (0: not modelled)
    host_copy_gbps: float = 0.0  # >0: workers share one host (CPU workers in one process): dispatch and
    # combine copy every (token, expert) row through host memory at this rate, instead of over links
    intra_collective_s: float = 25e-6  # physical model: fixed cost of one all-to-all inside a node
    inter_collective_s: float = 45e-6  # physical model: fixed cost of one all-to-all across nodes
    gemm_tile_tokens: int = 64  # physical model: rows of one grouped-GEMM tile (BLOCK_M); fewer tokens still
    # pay for a whole tile, which is the small-batch efficiency loss of expert GEMMs
    kernel_s: float = 3.4e-6  # one small dependent kernel of a device-side dispatch decision (launched in a
    # CUDA graph, as engines run decode steps): the decision's modelled cost is its kernels x this


# The collective costs are fitted to DeepEP's published low-latency kernels (deepseek-ai/DeepEP
# docs/legacy.md, H800, 128 tokens x top-8 x hidden 7168; see shared PHYSICS.md): EP8 dispatch 77 us
# for 7.3 MB of fp8 rows per GPU at 153 GB/s (48 us of bytes) leaves ~29 us fixed; combine 114 us for
# 14.7 MB of bf16 at 158 GB/s (93 us) leaves ~21 us: 25 us per collective inside a node. Across nodes
# (EP16, about half the rows over 50 GB/s RDMA): dispatch 118 us - 73 us, combine 195 us - 147 us:
# ~45 us. No DeepEP figure exists for PCIe-only nodes (the A6000 testbed); NCCL there is no faster
# than NVLink, so the intra-node figure is a lower bound for it. Grouped GEMM kernels run an expert's
# tokens in row tiles of 64-128 (DeepGEMM's BLOCK_M, CUTLASS grouped tile shapes); 64 is the
# optimistic end. The per-kernel figure of a device decision is NVIDIA's "Getting Started with CUDA
# Graphs" (A. Gray, NVIDIA Technical Blog, 2019): short kernels issued back to back cost ~3.8 us each
# from a stream and ~3.4 us each inside a CUDA graph (V100, kernels of ~2.9 us); our decision kernels
# work on [experts]-sized arrays, as short as kernels get, so 3.4 us each is conservative on Hopper.
# A GPU calibration (benchmarks/gpu_calibration.py) replaces these with measurements.


HARDWARE: dict[str, Hardware] = {
    # RTX A6000 (the paper's testbed): 48 GB GDDR6 at 768 GB/s, 154.8 dense FP16 tensor TFLOP/s
    # (NVIDIA A6000 datasheet); ~60% of peak and ~85% of bandwidth achievable. NVLink bridges
    # connect pairs only: 112.5 GB/s bidirectional = 56 GB/s each way. The card is PCIe 4.0 x16
    # (32 GB/s; ~25 GB/s host copies, ~20 GB/s peer-to-peer through the root complex); the paper
    # says PCIe 5.0, which an A6000 cannot use. Price: ~$0.80/h (community clouds).
    "a6000": Hardware("a6000", "8x RTX A6000 48 GB, pairwise NVLink, PCIe 4.0 (the published testbed)",
                      48.0, 93.0, 650.0, 56.0, 2, 20.0, 25.0, 12.5, 8, 0.80),
    # H100 SXM5: 80 GB HBM3 at 3.35 TB/s, 989 dense BF16 TFLOP/s; NVLink 4 through NVSwitch,
    # 900 GB/s bidirectional = 450 GB/s each way (~370 achievable in all-to-all); PCIe 5.0 x16
    # (64 GB/s; ~50 GB/s host copies); 8x 400 Gb/s InfiniBand = 50 GB/s per GPU between nodes.
    "h100": Hardware("h100", "H100 SXM5 80 GB, NVSwitch (NVLink 4), PCIe 5.0, 400 Gb/s IB per GPU",
                     80.0, 620.0, 2800.0, 370.0, 8, 50.0, 50.0, 45.0, 8, 2.50),
    # H200 SXM: H100's compute with 141 GB HBM3e at 4.8 TB/s; same NVLink/PCIe/network.
    "h200": Hardware("h200", "H200 SXM 141 GB, NVSwitch (NVLink 4), PCIe 5.0, 400 Gb/s IB per GPU",
                     141.0, 620.0, 4000.0, 370.0, 8, 50.0, 50.0, 45.0, 8, 3.50),
}


def get_hardware(name: str) -> Hardware:
    require_choice("hardware", name, HARDWARE)
    return HARDWARE[name]


CALIBRATED_FIELDS = {"tflops": "tflops", "hbm_gbps": "hbm_gbps", "host_gbps": "h2d_gbps"}  # Hardware: fitted


def hardware_from_calibration(doc: dict[str, Any], base: str | None = None) -> Hardware:
    """A `Hardware` from the JSON that benchmarks/gpu_calibration.py writes (already parsed).

    Fields used: `fitted.tflops` (TFLOP/s of a SwiGLU expert at the largest batch measured) -> tflops;
    `fitted.hbm_gbps` (one expert's weight bytes / its time at <= 8 tokens, the weight-streaming
    floor) -> hbm_gbps; `fitted.h2d_gbps` (host-to-device copy of one expert, pinned where CUDA
    has it, else pageable) -> host_gbps; `memory_gb` (device memory, null on CPU) -> memory_gb.
    Links, network, node size and price are not measured on one GPU: they come from the `base`
    preset, by default the one whose name appears in `device_name`. Also in the JSON, not used
    here: per-token GEMM rows, `fitted.gemm_efficiency` ({model: {tokens: TFLOP/s / fitted.tflops}}),
    pinned and pageable copy figures, and the device dispatch decision's seconds per case.
    """
    fitted = doc.get("fitted") if isinstance(doc, dict) else None
    if not isinstance(fitted, dict):
        raise MoelessError("calibration JSON has no 'fitted' object; write it with benchmarks/gpu_calibration.py")
    device_name = str(doc.get("device_name", ""))
    if base is None:
        base = next((name for name in HARDWARE if name in device_name.lower()), None)
        if base is None:
            raise MoelessError(f"no hardware preset matches device {device_name!r}; name a base: "
                               f"{', '.join(HARDWARE)}")
    figures = {}
    for field_name, key in CALIBRATED_FIELDS.items():
        value = fitted.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise MoelessError(f"calibration JSON: fitted.{key} must be a positive number, got {value!r}")
        figures[field_name] = float(value)
    hw = get_hardware(base)
    memory = doc.get("memory_gb")
    description = (f"{device_name} as measured (torch {doc.get('torch')}, CUDA {doc.get('cuda')}); "
                   f"links, network and price of {hw.name}")
    return replace(hw, name=f"{hw.name}-calibrated", description=description,
                   memory_gb=float(memory) if memory else hw.memory_gb, **figures)

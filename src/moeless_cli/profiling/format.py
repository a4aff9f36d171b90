"""The profile directory format and the ONE loader every later stage uses (numpy only, no torch).

A profile directory holds `manifest.json` plus safetensors files (see docs/profile-format.md):
    load.safetensors           per iteration x MoE layer x expert token counts (always present)
    routing.safetensors        per token: top-k expert ids per MoE layer, request, phase, iteration
    router_inputs.safetensors  a bounded sample of tokens: each MoE layer's router input (fp16)
An imported profile (`moeless profile import`) has load.safetensors only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moeless_cli.checks import (
    MAX_COUNT,
    MAX_EXPERTS,
    MAX_FLOAT,
    MAX_LAYERS,
    finite_array,
    finite_sum,
    integer,
    optional_integer,
    optional_number,
    shown,
)
from moeless_cli.errors import MoelessError
from moeless_cli.fileio import check_name_lengths, read_json

SCHEMA = "moeless.profile/v1"
MANIFEST = "manifest.json"
LOAD_FILE = "load.safetensors"
ROUTING_FILE = "routing.safetensors"
ROUTER_INPUTS_FILE = "router_inputs.safetensors"
PHASES = ("prefill", "decode")  # iteration_phase / token_phase codes 0 and 1
REQUIRED_MANIFEST_KEYS = ("schema", "model", "num_layers", "num_experts", "top_k", "iterations", "present")

# name -> (file, number of dimensions, what the leading dimension counts)
ARRAYS: dict[str, tuple[str, int, str]] = {
    "load": (LOAD_FILE, 3, "iterations"),
    "iteration_phase": (LOAD_FILE, 1, "iterations"),
    "iteration_batch": (LOAD_FILE, 1, "iterations"),
    "iteration_tokens": (LOAD_FILE, 1, "iterations"),
    "iteration_seconds": (LOAD_FILE, 1, "iterations"),
    "topk_ids": (ROUTING_FILE, 3, "tokens"),
    "token_request": (ROUTING_FILE, 1, "tokens"),
    "token_phase": (ROUTING_FILE, 1, "tokens"),
    "token_iteration": (ROUTING_FILE, 1, "tokens"),
    "token_position": (ROUTING_FILE, 1, "tokens"),
    "token_ids": (ROUTING_FILE, 1, "tokens"),
    "request_domain": (ROUTING_FILE, 1, "requests"),
    "request_prompt_tokens": (ROUTING_FILE, 1, "requests"),
    "router_inputs": (ROUTER_INPUTS_FILE, 3, "samples"),
    "router_input_tokens": (ROUTER_INPUTS_FILE, 1, "samples"),
}


@dataclass
class Profile:
    """A loaded profile. Arrays absent from the directory are None."""

    path: Path
    manifest: dict[str, Any]
    load: np.ndarray  # [iterations, layers, experts] token-to-expert assignments per forward pass
    iteration_phase: np.ndarray  # [iterations] uint8: 0 prefill, 1 decode
    iteration_batch: np.ndarray | None = None  # [iterations] int32: which prompt batch
    iteration_tokens: np.ndarray | None = None  # [iterations] int32: non-padding tokens in the pass
    iteration_seconds: np.ndarray | None = None  # [iterations] float64: profiled forward wall time
    topk_ids: np.ndarray | None = None  # [tokens, layers, top_k] uint8/int16 expert ids
    token_request: np.ndarray | None = None  # [tokens] int32 request id
    token_phase: np.ndarray | None = None  # [tokens] uint8: 0 prefill, 1 decode
    token_iteration: np.ndarray | None = None  # [tokens] int32 index into the iteration axis
    token_position: np.ndarray | None = None  # [tokens] int32 position within its request
    token_ids: np.ndarray | None = None  # [tokens] int32 vocabulary id fed to the model
    request_domain: np.ndarray | None = None  # [requests] int16 index into manifest dataset.domains
    request_prompt_tokens: np.ndarray | None = None  # [requests] int32 prompt length after truncation
    router_inputs: np.ndarray | None = None  # [samples, layers, hidden] float16 router inputs
    router_input_tokens: np.ndarray | None = None  # [samples] int64 token index of each sample
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return str(self.manifest["model"]["id"])

    @property
    def config_hash(self) -> str | None:
        return self.manifest["model"].get("config_hash")

    @property
    def family(self) -> str | None:
        return self.manifest["model"].get("family")

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def num_experts(self) -> int:
        return int(self.manifest["num_experts"])

    @property
    def top_k(self) -> int | None:
        top_k = self.manifest["top_k"]
        return None if top_k is None else int(top_k)

    @property
    def moe_layer_ids(self) -> list[int]:
        return list(self.manifest.get("moe_layer_ids") or range(self.num_layers))

    @property
    def imported(self) -> bool:
        return self.manifest.get("kind") == "imported"

    @property
    def domains(self) -> list[str]:
        return list((self.manifest.get("dataset") or {}).get("domains") or [])

    @property
    def num_iterations(self) -> int:
        return int(self.load.shape[0])

    @property
    def num_tokens(self) -> int:
        return 0 if self.topk_ids is None else int(self.topk_ids.shape[0])

    def layer_load(self) -> np.ndarray:
        """Total load over all iterations. Returns: [layers, experts]."""
        return self.load.sum(axis=0)


def _read_arrays(path: Path, file: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    target = path / file
    if not target.is_file():
        raise MoelessError(f"profile {path}: missing {file} (the manifest says it is present)")
    try:
        return load_file(str(target))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MoelessError(f"profile {path}: {file} is not a readable safetensors file: {exc}") from None


def _check_manifest(path: Path, manifest: Any) -> dict[str, Any]:
    """Every manifest field later code reads, with its type and bounds (checks.py)."""
    where = path / MANIFEST
    if not isinstance(manifest, dict):
        raise MoelessError(f"{where} is not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise MoelessError(f"{where}: schema is {shown(manifest.get('schema'))}, expected {SCHEMA!r}")
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise MoelessError(f"{where}: missing field(s) {', '.join(missing)}")
    model = manifest["model"]
    if not isinstance(model, dict) or not isinstance(model.get("id"), str):
        raise MoelessError(f"{where}: field model must be an object with a string id")
    if not isinstance(model.get("config_hash"), (str, type(None))) or not isinstance(model.get("family"), (str, type(None))):
        raise MoelessError(f"{where}: model.config_hash and model.family must be strings or null")
    for key, high in (("num_layers", MAX_LAYERS), ("num_experts", MAX_EXPERTS), ("iterations", MAX_COUNT)):
        integer(f"{where}: field {key}", manifest[key], 1, high)
    optional_integer(f"{where}: field top_k", manifest["top_k"], 1, manifest["num_experts"])
    optional_integer(f"{where}: field hidden_size", manifest.get("hidden_size"), 1, 1 << 20)
    optional_number(f"{where}: field expert_bytes", manifest.get("expert_bytes"), 0)
    _check_layer_ids(where, manifest.get("moe_layer_ids"), manifest["num_layers"])
    for key in ("present", "sizes", "timings", "dataset", "source"):
        if not isinstance(manifest.get(key), (dict, type(None))):
            raise MoelessError(f"{where}: field {key} must be an object")
    domains = (manifest.get("dataset") or {}).get("domains")
    if domains is not None and not (isinstance(domains, list) and all(isinstance(d, str) for d in domains)):
        raise MoelessError(f"{where}: dataset.domains must be a list of strings")
    for key, value in (manifest.get("sizes") or {}).items():
        integer(f"{where}: sizes.{key}", value, 0, MAX_COUNT * 64)
    return manifest


def _check_layer_ids(where: Path, ids: Any, num_layers: int) -> None:
    """moe_layer_ids: null, or one distinct non-negative layer index per MoE layer."""
    if ids is None:
        return
    if not isinstance(ids, list) or len(ids) != num_layers:
        raise MoelessError(f"{where}: field moe_layer_ids must be a list of {num_layers} layer indices")
    for i, layer in enumerate(ids):
        integer(f"{where}: moe_layer_ids[{i}]", layer, 0, MAX_LAYERS)
    if len(set(ids)) != len(ids):
        raise MoelessError(f"{where}: field moe_layer_ids repeats a layer")


def _check_shapes(profile: Profile, sizes: dict[str, int], hidden: int | None) -> None:
    """Every array's leading dimension must match the count it claims; trailing dims the model."""
    expected_tail = {
        "load": (profile.num_layers, profile.num_experts),
        "topk_ids": (profile.num_layers, profile.top_k),
        "router_inputs": (profile.num_layers, hidden),
    }
    for name, (file, ndim, count) in ARRAYS.items():
        value = getattr(profile, name)
        if value is None:
            continue
        where = f"profile {profile.path}: {file} array {name}"
        if value.ndim != ndim:
            raise MoelessError(f"{where} has {value.ndim} dimensions, expected {ndim}")
        if count in sizes and value.shape[0] != sizes[count]:
            raise MoelessError(f"{where} has {value.shape[0]} {count}, the manifest says {sizes[count]}")
        tail = expected_tail.get(name)
        if tail is not None:
            wanted = tuple(value.shape[i + 1] if t is None else t for i, t in enumerate(tail))  # None: any
            if tuple(value.shape[1:]) != wanted:
                raise MoelessError(f"{where} has shape {list(value.shape)}, expected [{count}, {', '.join(map(str, wanted))}]")
    _check_values(profile)
    if profile.topk_ids is not None and profile.topk_ids.size and int(profile.topk_ids.max()) >= profile.num_experts:
        raise MoelessError(f"profile {profile.path}: routing.safetensors topk_ids has expert ids >= num_experts")
    if profile.router_input_tokens is not None and profile.router_input_tokens.size:
        if int(profile.router_input_tokens.max()) >= sizes.get("tokens", 0):
            raise MoelessError(f"profile {profile.path}: router_input_tokens points past the token arrays")


INTEGER_ARRAYS = ("iteration_phase", "iteration_batch", "iteration_tokens", "topk_ids", "token_request", "token_phase",
                  "token_iteration", "token_position", "token_ids", "request_domain", "request_prompt_tokens",
                  "router_input_tokens")


def _check_values(profile: Profile) -> None:
    """Array kinds and values: finite non-negative loads and times, finite router inputs, and
    integer bookkeeping that is non-negative and points inside the profile."""
    where = f"profile {profile.path}"
    for name in ARRAYS:
        value = getattr(profile, name)
        if value is None:
            continue
        integral = name in INTEGER_ARRAYS
        if value.dtype.kind not in ("iu" if integral else "iuf"):
            kind = "integers" if integral else "numbers"
            raise MoelessError(f"{where}: array {name} must hold {kind}, not {value.dtype}")
        finite_array(f"{where}: array {name}", value, nonnegative=name != "router_inputs",
                     high=MAX_FLOAT if name in ("load", "iteration_seconds") else None)
    finite_sum(f"{where}: the loads", profile.load)
    requests = next((len(a) for a in (profile.request_domain, profile.request_prompt_tokens) if a is not None), None)
    for name, bound in (("token_iteration", profile.num_iterations), ("iteration_phase", len(PHASES)),
                        ("token_phase", len(PHASES)), ("request_domain", max(len(profile.domains), 1)),
                        ("token_request", requests if requests is not None else MAX_COUNT)):
        value = getattr(profile, name)
        if value is not None and value.size and int(value.max()) >= bound:
            raise MoelessError(f"{where}: array {name} has a value {int(value.max())} >= {bound}")


def is_profile_dir(path: Path) -> bool:
    """A directory moeless wrote as a profile: its manifest names the profile schema."""
    try:
        manifest = read_json(Path(path) / MANIFEST, what="profile manifest")
    except MoelessError:
        return False
    return isinstance(manifest, dict) and manifest.get("schema") == SCHEMA


def load_profile(path: str | Path) -> Profile:
    """Load and validate a profile directory; raises a one-line MoelessError naming what is wrong."""
    path = Path(path)
    check_name_lengths(path, "profile")
    if not path.is_dir():
        raise MoelessError(f"profile not found: {path} (run `moeless profile` or `moeless profile import`)")
    manifest = _check_manifest(path, read_json(path / MANIFEST, what="profile manifest"))
    present = manifest["present"] if isinstance(manifest["present"], dict) else {}
    arrays = _read_arrays(path, LOAD_FILE)
    if present.get("routing"):
        arrays.update(_read_arrays(path, ROUTING_FILE))
    if present.get("router_inputs"):
        arrays.update(_read_arrays(path, ROUTER_INPUTS_FILE))
    for required in ("load", "iteration_phase"):
        if required not in arrays:
            raise MoelessError(f"profile {path}: {LOAD_FILE} has no array {required!r}")
    if present.get("routing") and "topk_ids" not in arrays:
        raise MoelessError(f"profile {path}: {ROUTING_FILE} has no array 'topk_ids'")
    known = {name: arrays[name] for name in ARRAYS if name in arrays}
    profile = Profile(path=path, manifest=manifest, timings=dict(manifest.get("timings") or {}), **known)
    sizes = {k: int(v) for k, v in (manifest.get("sizes") or {}).items() if isinstance(v, int)}
    sizes["iterations"] = manifest["iterations"]
    _check_shapes(profile, sizes, manifest.get("hidden_size"))
    return profile


def check_profile_out(out: str | Path, force: bool = False) -> Path:
    """A profile's output folder, checked before the work (fileio.output_directory): new, empty,
    or a profile to replace with `force`. Returns the folder to write."""
    from moeless_cli.fileio import output_directory

    return output_directory(out, "profile folder", is_profile_dir, force, kind="profile")


def save_profile(out: str | Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], force: bool = False) -> Path:
    """Write a profile directory atomically: a failed write leaves no partial directory. An
    existing profile at `out` is replaced only with `force`; any other non-empty folder never is.

    `arrays` maps names from ARRAYS to numpy arrays; each lands in the file ARRAYS names. The
    manifest's `present` flags are filled in here from which files got arrays.
    """
    from safetensors.numpy import save

    from moeless_cli.fileio import atomic_directory, write_bytes_atomic, write_json_atomic

    load = finite_array(f"profile {out}: the loads", arrays["load"], nonnegative=True, high=MAX_FLOAT)
    finite_sum(f"profile {out}: the loads", load)  # never written as a profile that cannot be read back
    by_file: dict[str, dict[str, np.ndarray]] = {}
    for name, value in arrays.items():
        if value is not None:
            by_file.setdefault(ARRAYS[name][0], {})[name] = np.ascontiguousarray(value)
    manifest = {**manifest, "schema": SCHEMA}
    manifest["present"] = {
        "load": LOAD_FILE in by_file,
        "routing": ROUTING_FILE in by_file,
        "router_inputs": ROUTER_INPUTS_FILE in by_file,
        "timings": bool(manifest.get("timings")),
    }
    with atomic_directory(check_profile_out(out, force)) as tmp:
        for file, tensors in by_file.items():
            write_bytes_atomic(tmp / file, save(tensors))
        write_json_atomic(tmp / MANIFEST, manifest)
    return Path(out)

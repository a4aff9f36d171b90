"""The predictor file: every trained predictor in one safetensors file, its manifest in the metadata.

Tensor names: `moeless.d{d}.l{t}.weight` [experts, hidden] / `.bias` [experts] (when the gate
has one) / `.calib_scale` [1] / `.calib_offset` [experts] (soft counts: P(selected) =
sigmoid(scale * margin + offset), margin = logit minus the token's top-k boundary) and
`paper.d{d}.l{t}.weight` (+ `.bias` when the model's gate has one) predict MoE layer t from the
router input of layer t - d; `correction.l{t}` [experts] is layer t's top-k selection bias, when
the model has one (DeepSeek-V3, ERNIE), which both kinds of gate copy keep using.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from moeless_cli.checks import MAX_EXPERTS, MAX_LAYERS, finite_array, integer, number, optional_integer, shown
from moeless_cli.errors import MoelessError
from moeless_cli.fileio import check_name_lengths, write_bytes_atomic
from moeless_cli.predictor.metrics import load_fractions

FORMAT = "moeless-predictor"
FORMAT_VERSION = 1
METADATA_KEY = "moeless_predictor"  # safetensors metadata entry holding the JSON manifest
METHODS = ("moeless", "paper")  # the predictor kinds stored per (layer, distance)
SCORES = ("softmax", "sigmoid")  # the router's score function (predictor.gates.select_topk)


def tensor_name(method: str, layer: int, distance: int, part: str) -> str:
    return f"{method}.d{distance}.l{layer}.{part}"


def save_predictor(path: str | Path, manifest: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write tensors (name -> float32 array) with the manifest (JSON) in the metadata, atomically."""
    from safetensors.numpy import save

    for name, array in tensors.items():
        if not np.isfinite(np.asarray(array, dtype=np.float64)).all():
            raise MoelessError(f"training gave NaN or infinite values in {name} (are the profile's router inputs "
                               f"out of range?); {path} was not written")
    data = save(
        {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in tensors.items()},
        metadata={METADATA_KEY: orjson.dumps(manifest, option=orjson.OPT_SERIALIZE_NUMPY).decode()},
    )
    return write_bytes_atomic(path, data)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a predictor file, without loading its tensors (its fields are checked by
    `load_predictor`, after the model it was trained for)."""
    from safetensors import safe_open

    path = Path(path)
    check_name_lengths(path, "predictor file")
    if not path.is_file():
        raise MoelessError(f"predictor file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise MoelessError(f"{path} is not a readable safetensors predictor file ({shown(str(exc), 160)})") from None
    if METADATA_KEY not in metadata:
        raise MoelessError(f"{path} is not a moeless predictor file (no `{METADATA_KEY}` manifest)")
    try:
        manifest = orjson.loads(metadata[METADATA_KEY])
    except orjson.JSONDecodeError:
        raise MoelessError(f"{path}: its `{METADATA_KEY}` manifest is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise MoelessError(f"{path}: its `{METADATA_KEY}` manifest is not a JSON object")
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise MoelessError(f"{path}: unsupported predictor format {shown(manifest.get('format'))} "
                           f"v{shown(manifest.get('version'))}")
    return manifest


def _check_manifest(path: Path, m: dict[str, Any]) -> None:
    """The fields LoadPredictor reads: sizes, routing rule and one entry per (layer, distance)."""
    layers = integer(f"{path}: num_layers", m.get("num_layers", MAX_LAYERS), 1, MAX_LAYERS)
    experts = integer(f"{path}: num_experts", m.get("num_experts"), 1, MAX_EXPERTS)
    optional_integer(f"{path}: hidden_size", m.get("hidden_size"), 1, 1 << 20)
    integer(f"{path}: top_k", m.get("top_k"), 1, experts)
    groups = integer(f"{path}: num_groups", m.get("num_groups", 1), 1, experts)
    integer(f"{path}: top_groups", m.get("top_groups", 1), 1, groups)
    if experts % groups:
        raise MoelessError(f"{path}: num_groups {groups} does not divide num_experts {experts}")
    if m.get("score") not in SCORES:
        raise MoelessError(f"{path}: score must be one of {', '.join(SCORES)}, got {shown(m.get('score'))}")
    for key in ("config_hash", "model_id"):
        if not isinstance(m.get(key), (str, type(None))):
            raise MoelessError(f"{path}: {key} must be a string")
    entries = m.get("entries")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise MoelessError(f"{path}: entries must be a non-empty list of objects")
    for i, entry in enumerate(entries):
        at = f"{path}: entries[{i}]"
        layer = integer(f"{at}.layer", entry.get("layer"), 0, layers - 1)
        integer(f"{at}.distance", entry.get("distance"), 1, max(layer, 1))
        number(f"{at}.blend_weight", entry.get("blend_weight"), 0.0, 1.0)
        number(f"{at}.ema_alpha", entry.get("ema_alpha"), 0.0, 1.0)


def _check_tensors(path: Path, manifest: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    """Every tensor an entry uses is there, finite and of the manifest's shape."""
    experts = int(manifest["num_experts"])
    weights = [a for n, a in tensors.items() if n.endswith(".weight") and a.ndim == 2]
    hidden = manifest.get("hidden_size") or (int(weights[0].shape[1]) if weights else 1)
    for name, array in tensors.items():
        with np.errstate(over="ignore", invalid="ignore"):
            finite_array(f"{path}: tensor {name}", np.asarray(array).astype(np.float32))  # as LoadPredictor holds it
    for entry in manifest["entries"]:
        layer, distance = int(entry["layer"]), int(entry["distance"])
        needed = {tensor_name(m, layer, distance, "weight"): (experts, hidden) for m in METHODS}
        if entry.get("count_mode") != "hard":
            needed[tensor_name("moeless", layer, distance, "calib_scale")] = (1,)
            needed[tensor_name("moeless", layer, distance, "calib_offset")] = (experts,)
        for m in METHODS:
            needed[tensor_name(m, layer, distance, "bias")] = (experts,)
        needed[f"correction.l{layer}"] = (experts,)
        for name, shape in needed.items():
            if name not in tensors:
                if name.endswith(("bias", f"correction.l{layer}")):
                    continue  # optional: only where the model's gate has one
                raise MoelessError(f"{path}: tensor {name} is missing")
            if tuple(tensors[name].shape) != shape:
                raise MoelessError(f"{path}: tensor {name} has shape {list(tensors[name].shape)}, expected {list(shape)}")


class LoadPredictor:
    """Predicts a layer's per-expert load from an earlier layer's router input, for serve and bench.

    moeless estimates blend the token-level soft counts with an EMA of the loads observed so far
    (`observe_load`), exactly as they were validated in training; before anything is observed the
    prior is uniform.
    """

    def __init__(self, manifest: dict[str, Any], tensors: dict[str, np.ndarray]):
        import torch

        self.manifest = manifest
        self.num_experts = int(manifest["num_experts"])
        self.top_k = int(manifest["top_k"])
        self.score = manifest["score"]
        self.num_groups = int(manifest.get("num_groups", 1))
        self.top_groups = int(manifest.get("top_groups", 1))
        self._entries = {(int(e["layer"]), int(e["distance"])): e for e in manifest["entries"]}
        self._tensors = {name: torch.from_numpy(array.astype(np.float32)) for name, array in tensors.items()}
        self.reset_history()

    @property
    def distances(self) -> list[int]:
        return sorted({d for _, d in self._entries})

    def layers(self, distance: int = 1) -> list[int]:
        """Target layers that have a predictor at this distance."""
        return sorted(t for t, d in self._entries if d == distance)

    def reset_history(self) -> None:
        """Forget observed loads (the blend's prior restarts uniform)."""
        uniform = np.full(self.num_experts, 1.0 / self.num_experts)
        self._prior = {key: uniform.copy() for key in self._entries}
        self._seen = {key: False for key in self._entries}

    def observe_load(self, layer: int, counts) -> None:
        """Feed the actual per-expert counts [experts] of MoE layer `layer` in the batch just run."""
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        if counts.sum() <= 0:
            return
        fractions = load_fractions(counts[None])[0]
        for key, entry in self._entries.items():
            if key[0] == layer:
                alpha = float(entry["ema_alpha"])
                self._prior[key] = fractions if not self._seen[key] else (1 - alpha) * self._prior[key] + alpha * fractions
                self._seen[key] = True

    def _entry(self, layer: int, distance: int) -> dict[str, Any]:
        if (layer, distance) not in self._entries:
            raise MoelessError(
                f"the predictor has no model for layer {layer} at distance {distance} "
                f"(distances {self.distances}; layers {self.layers(distance) or self.layers(self.distances[0])})"
            )
        return self._entries[(layer, distance)]

    def logits(self, hidden, layer: int, distance: int = 1, method: str = "moeless"):
        """Predicted router logits of MoE layer `layer`.

        hidden: [tokens, hidden] router input of MoE layer `layer - distance` (torch or numpy)
        -> torch [tokens, experts].
        """
        import torch

        self._entry(layer, distance)
        if method not in METHODS:
            raise MoelessError(f"unknown predictor method {method!r}; choose from {', '.join(METHODS)}")
        x = hidden if isinstance(hidden, torch.Tensor) else torch.from_numpy(np.asarray(hidden))
        x = x.detach().to(device="cpu", dtype=torch.float32)
        weight = self._tensors[tensor_name(method, layer, distance, "weight")]
        bias = self._tensors.get(tensor_name(method, layer, distance, "bias"))
        out = x @ weight.T  # [tokens, experts]
        return out if bias is None else out + bias

    def predict_topk(self, hidden, layer: int, distance: int = 1, method: str = "moeless") -> np.ndarray:
        """Predicted expert ids of each token at MoE layer `layer`: [tokens, top_k]."""
        import torch

        from moeless_cli.predictor.gates import select_topk

        logits = self.logits(hidden, layer, distance, method)
        correction = self._tensors.get(f"correction.l{layer}")  # both copies keep the model's routing rule
        with torch.no_grad():
            return select_topk(logits, self.top_k, self.score, correction, self.num_groups, self.top_groups).numpy()

    def predict_layer_load(self, hidden, layer: int, distance: int = 1, method: str = "moeless") -> np.ndarray:
        """Predicted token count per expert of MoE layer `layer` for this batch.

        hidden: [tokens, hidden] router input of MoE layer `layer - distance` -> counts [experts]
        (float64, summing to tokens * top_k). `paper` counts its top-k; `moeless` blends its
        token counts (calibrated soft or top-k, as validated per layer) with the observed-load prior.
        """
        counts = self.token_counts(hidden, layer, distance, method)
        return self.blend_counts(counts.sum(axis=0), counts.shape[0], layer, distance, method)

    def token_counts(self, hidden, layer: int, distance: int = 1, method: str = "moeless") -> np.ndarray:
        """Each token's predicted contribution to the layer's per-expert counts: [tokens, experts]
        float64 (one-hot top-k, or calibrated soft counts). Sums over a batch go to `blend_counts`."""
        import torch

        entry = self._entry(layer, distance)
        if method == "paper" or entry.get("count_mode") == "hard":
            ids = self.predict_topk(hidden, layer, distance, method)  # [tokens, top_k]
            counts = np.zeros((ids.shape[0], self.num_experts))
            np.put_along_axis(counts, ids.astype(np.int64), 1.0, axis=1)
            return counts
        from moeless_cli.predictor.gates import selection_margin

        scale = self._tensors[tensor_name(method, layer, distance, "calib_scale")]
        offset = self._tensors[tensor_name(method, layer, distance, "calib_offset")]
        with torch.no_grad():
            logits = self.logits(hidden, layer, distance, method)  # [tokens, experts]
            margins = selection_margin(logits, self.top_k)
            return torch.sigmoid(scale * margins + offset).double().numpy()

    def blend_counts(self, token_counts, tokens: int, layer: int, distance: int = 1, method: str = "moeless") -> np.ndarray:
        """A batch's summed token counts [experts] -> predicted load [experts]: `paper` as is,
        `moeless` blended with the observed-load prior and scaled to tokens * top_k."""
        entry = self._entry(layer, distance)
        token_counts = np.asarray(token_counts, dtype=np.float64)
        if method == "paper":
            return token_counts
        weight = float(entry["blend_weight"])
        fractions = weight * load_fractions(token_counts[None])[0] + (1 - weight) * self._prior[(layer, distance)]
        return fractions * tokens * self.top_k


def load_predictor(path: str | Path, expected_config_hash: str | None = None) -> LoadPredictor:
    """Open a predictor file; refuse one trained for another model (different config hash)."""
    from safetensors.numpy import load_file

    manifest = read_manifest(path)
    if expected_config_hash is not None and manifest.get("config_hash") != expected_config_hash:
        raise MoelessError(
            f"predictor {path} was trained for model {manifest.get('model_id')} (config hash "
            f"{manifest.get('config_hash')}), not for this model (config hash {expected_config_hash}); "
            "train one with `moeless train-predictor --profile <a profile of this model>`"
        )
    _check_manifest(Path(path), manifest)
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' own error types for corrupt data
        raise MoelessError(f"{path} is not a readable safetensors predictor file ({shown(str(exc), 160)})") from None
    _check_tensors(Path(path), manifest, tensors)
    return LoadPredictor(manifest, tensors)


def pack_predictors(predictors, gates, header: dict[str, Any], report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Manifest and tensors for `save_predictor`.

    predictors: list of pipeline.LayerPredictors; gates: the model's GateBank; header: model_id,
    config_hash and run settings to record; report: the evaluation (layers + summary).
    """
    tensors: dict[str, np.ndarray] = {}
    entries = []
    for p in predictors:
        for method, fit in (("moeless", p.moeless), ("paper", p.paper)):
            tensors[tensor_name(method, p.layer, p.distance, "weight")] = fit.weight
            if fit.bias is not None:
                tensors[tensor_name(method, p.layer, p.distance, "bias")] = fit.bias
            if fit.calib_offset is not None:
                tensors[tensor_name(method, p.layer, p.distance, "calib_offset")] = fit.calib_offset
                tensors[tensor_name(method, p.layer, p.distance, "calib_scale")] = np.array([fit.calib_scale])
        if gates.correction is not None:
            tensors[f"correction.l{p.layer}"] = gates.correction[p.layer]
        entries.append(
            {
                "layer": p.layer,
                "distance": p.distance,
                "input_layer": p.layer - p.distance,
                "blend_weight": p.blend.weight,
                "count_mode": p.blend.mode,
                "ema_alpha": p.blend.alpha,
                "paper_fine_tuned": p.paper.fine_tuned,
                "moeless_parameters": p.moeless.num_parameters,
            }
        )
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **header,
        "num_layers": gates.num_layers,
        "num_experts": gates.num_experts,
        "hidden_size": gates.hidden_size,
        "top_k": gates.top_k,
        "score": gates.score,
        "num_groups": gates.num_groups,
        "top_groups": gates.top_groups,
        "gate_parameters": int(gates.weight[0].size + (0 if gates.bias is None else gates.bias[0].size)),
        "entries": entries,
        "metrics": {"layers": report["layers"], "summary": report["summary"]},
    }
    return manifest, tensors

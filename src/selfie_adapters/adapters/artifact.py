"""An adapter = a projection + the metadata of its file; reading and writing the published format.

Format (fixed by the published adapters): one ``.safetensors`` file, tensors named as in
``projections.py``, string metadata ``projection_type``, ``model_name``, ``config_json`` and
flat keys (``model_dim``, ``normalize_input``, ``init_scale``, ``low_rank_rank``, ...).
Legacy ``.pt`` checkpoints are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch

from ..errors import SelfieError
from ..files import check_finite, load_torch, read_safetensors, resolve_file, save_tensors
from .kinds import INIT_FACTOR, INIT_SCALE, PROJECTIONS, Projection, build_projection, l2_normalize
from .stats import projection_stats


class Adapter:
    """A trained (or identity) map from model vectors to soft tokens, with its file metadata.

    >>> adapter = load_adapter("goodfire-sae-scalar-affine.safetensors")
    >>> soft = adapter.transform(vectors)          # (N, 4096) -> (N, 4096), same dtype
    """

    def __init__(self, projection: Projection, metadata: dict[str, str] | None = None) -> None:
        self.projection = projection
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("projection_type", projection.kind)
        self.metadata.setdefault("model_name", "")

    @classmethod
    def identity(cls, dim: int, *, normalize_input: bool = True, model_name: str = "") -> Adapter:
        """The untrained baseline: x (optionally L2-normalised); combine with a scale."""
        proj = build_projection("identity", dim, normalize_input=normalize_input)
        return cls(proj, {"model_name": model_name, "normalize_input": str(normalize_input).lower()})

    @property
    def kind(self) -> str:
        return self.projection.kind

    @property
    def dim(self) -> int:
        return self.projection.dim

    @property
    def model_name(self) -> str:
        return self.metadata.get("model_name", "")

    @property
    def normalize_input(self) -> bool:
        return self.projection.normalize_input

    def num_parameters(self) -> int:
        return self.projection.num_parameters()

    def summary(self) -> dict:
        """Kind, model, dimension, parameter count and metadata (``config_json`` parsed), as `selfie inspect` shows."""
        info = {"projection_type": self.kind, "model_name": self.model_name, "model_dim": self.dim,
                "num_parameters": self.num_parameters(), "normalize_input": self.normalize_input}
        info.update({k: v for k, v in self.metadata.items() if k not in info and k != "config_json"})
        if "config_json" in self.metadata:
            try:
                info["config"] = json.loads(self.metadata["config_json"])
            except json.JSONDecodeError:
                info["config"] = self.metadata["config_json"]
        return info

    # ---- the reference implementation's SelfIEAdapter API (its scripts call these) ----

    @property
    def model_dim(self) -> int:
        return self.dim

    @property
    def device(self) -> torch.device:
        return next(self.projection.parameters(), torch.empty(0)).device

    @property
    def config(self) -> dict:
        """The ``projection`` section of the training config (type, normalize_input, init_scale, ...)."""
        cfg = projection_config(self.projection)
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            cfg.update(json.loads(self.metadata.get("config_json", "{}")).get("projection") or {})
        return cfg

    def get_metadata(self) -> dict:
        """Architecture and training facts, with the reference's keys and value types."""
        meta = {"projection_type": self.kind, "model_dim": self.dim, "normalize_input": self.normalize_input,
                "num_parameters": self.num_parameters(), "device": str(self.device),
                "checkpoint_format_version": int(self.metadata.get("checkpoint_format_version") or 0)}
        for key, cast in (("global_step", int), ("best_val_loss", float)):
            if self.metadata.get(key) not in (None, "", "None"):
                meta[key] = cast(float(self.metadata[key])) if cast is int else cast(self.metadata[key])
        meta.update({k: v for k in ("init_scale", "low_rank_rank", "low_rank_init_factor")
                     if (v := self.config.get(k)) is not None})
        return meta

    def get_projection_stats(self) -> dict[str, float]:
        """Scale, bias/weight norms and ‖UVᵀ‖_F, where this kind has them."""
        return projection_stats(self.projection)

    def to(self, device: torch.device | str | None) -> Adapter:
        if device is not None:
            self.projection.to(device)
        return self

    def transform(self, x: torch.Tensor, normalize_input: bool | None = None) -> torch.Tensor:
        """(d,) or (..., d) vectors → soft tokens of the same shape and dtype (math in fp32)."""
        if x.shape[-1] != self.dim:
            raise SelfieError(f"vectors have dimension {x.shape[-1]} but the adapter expects {self.dim}")
        check_finite(x, "input vectors")
        device = next(self.projection.parameters(), torch.empty(0, device=x.device)).device
        with torch.no_grad():
            out = self.projection(x.to(device), normalize_input=normalize_input)
        return out.to(x.device)

    def scaled_transform(self, x: torch.Tensor, scale: float | torch.Tensor = 1.0, *,
                         prepared: bool = False) -> torch.Tensor:
        """(N, d) → (N, d) fp32 soft tokens ``adapter(scale · x̂)``: the scale multiplies the adapter's
        input after its L2 normalisation (if it normalises), so a trained bias is not scaled — the
        reference's eval semantics. ``scale``: one number or one per row, shape (N,). ``prepared``:
        ``x`` is already ``prepare(x)`` (describe prepares each vector once for all its scales)."""
        x_hat = x if prepared else self.prepare(x)
        scale = torch.as_tensor(scale, dtype=torch.float32, device=x_hat.device).reshape(-1, 1)  # (N | 1, 1)
        return self.transform(scale * x_hat, normalize_input=False).float()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) → fp32, L2-normalised when the adapter normalises its input (eps as in training)."""
        x = x.float()
        return l2_normalize(x) if self.normalize_input else x  # overflow-safe, as the projections

    def save(self, path: str | os.PathLike, **extra_metadata: str) -> Path:
        """Write the published single-file format (atomically); loads back identically."""
        path = Path(path)
        meta = {**self.metadata, **{k: str(v) for k, v in extra_metadata.items()}}
        meta.update(flat_metadata(self.projection))
        meta.setdefault("config_json", json.dumps({"projection": projection_config(self.projection)}))
        return save_tensors(self.projection.state_dict(), path, meta)

    def __repr__(self) -> str:
        return (f"Adapter({self.kind}, d={self.dim}, params={self.num_parameters():,}, "
                f"normalize_input={self.normalize_input}, model={self.model_name!r})")


def projection_config(proj: Projection) -> dict:
    """The ``projection`` section of a training config for this projection."""
    return {"type": proj.kind, "normalize_input": proj.normalize_input, "init_scale": proj.init_scale,
            "low_rank_rank": proj.rank, "low_rank_init_factor": proj.init_factor}


def flat_metadata(proj: Projection) -> dict[str, str]:
    meta = {"projection_type": proj.kind, "model_dim": str(proj.dim),
            "normalize_input": str(proj.normalize_input).lower(), "init_scale": str(proj.init_scale)}
    if proj.rank is not None:
        meta["low_rank_rank"] = str(proj.rank)
    return meta


def _parse_bool(value: str | bool | None, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if value.strip().lower() in ("true", "1", "yes"):
        return True
    if value.strip().lower() in ("false", "0", "no"):
        return False
    raise SelfieError(f"metadata normalize_input must be 'true' or 'false', got {value!r}")


def build_from_state(state: dict[str, torch.Tensor], metadata: dict[str, str], source: str,
                     normalize_input: bool | None = None) -> Adapter:
    """Rebuild an adapter from tensors + metadata; strict about kind, names and shapes."""
    cfg: dict = {}
    if "config_json" in metadata:
        try:
            cfg = json.loads(metadata["config_json"]).get("projection", {}) or {}
        except (json.JSONDecodeError, AttributeError) as e:
            raise SelfieError(f"{source}: config_json metadata is not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise SelfieError(f"{source}: config_json's 'projection' must be a mapping, got {cfg!r:.60}")
    kind = metadata.get("projection_type") or cfg.get("type")
    if not kind:
        raise SelfieError(f"{source}: no projection_type in the file's metadata; valid: {', '.join(PROJECTIONS)}")
    if kind not in PROJECTIONS:
        raise SelfieError(f"{source}: unknown projection type {kind!r}; valid: {', '.join(PROJECTIONS)}")
    dim = _infer_dim(state, metadata, source)
    rank = metadata.get("low_rank_rank") or cfg.get("low_rank_rank")
    if rank in (None, "", "None", "null") and "U" in state:
        rank = state["U"].shape[-1]
    rank = _meta_number(source, "low_rank_rank", rank, int, 1) if rank not in (None, "", "None", "null") else None
    norm = _parse_bool(metadata.get("normalize_input", cfg.get("normalize_input")), True)
    init_scale = _meta_number(source, "init_scale", metadata.get("init_scale") or cfg.get("init_scale") or INIT_SCALE,
                              float, 0.0)
    with torch.device("meta"):
        proto = build_projection(kind, dim, rank=rank, normalize_input=norm, init_scale=init_scale)
    expected = {k: tuple(v.shape) for k, v in proto.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SelfieError(f"{source}: a {kind} adapter needs tensors {sorted(expected)}; "
                          f"missing {missing}, unexpected {unexpected}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise SelfieError(f"{source}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                              f"expected {shape} for a {kind} adapter with d={dim}")
        check_finite(state[name], f"{source}: tensor {name!r}")
    proj = build_projection(kind, dim, rank=rank, normalize_input=norm, init_scale=init_scale,
                            init_factor=_meta_number(source, "low_rank_init_factor",
                                                     cfg.get("low_rank_init_factor") or INIT_FACTOR, float, 0.0))
    proj.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    if normalize_input is not None:
        proj.normalize_input = normalize_input
    meta = {k: str(v) for k, v in metadata.items()}
    meta.setdefault("projection_type", kind)
    return Adapter(proj.eval(), meta)


def _meta_number(source: str, key: str, value, kind: type, low: float) -> int | float:
    """A numeric metadata value (stored as a string), finite and >= ``low``; else a one-line error."""
    try:
        number = kind(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number < low or (kind is int and isinstance(value, float)
                                                                        and value != number):
        raise SelfieError(f"{source}: metadata {key} must be {'an integer' if kind is int else 'a number'} "
                          f">= {low:g}, got {value!r}; the file is damaged or not a selfie adapter")
    return number


def _infer_dim(state: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> int:
    for name in ("bias", "weight", "U", "V"):
        if name in state and state[name].dim() >= 1:
            return int(state[name].shape[0])
    if metadata.get("model_dim"):
        return _meta_number(source, "model_dim", metadata["model_dim"], int, 1)
    raise SelfieError(f"{source}: cannot tell the vector dimension (no bias/weight/U tensor and no "
                      "model_dim metadata)")


def load_adapter(source: str | os.PathLike, device: torch.device | str | None = None,
                 normalize_input: bool | None = None) -> Adapter:
    """Load a published or trained adapter.

    ``source``: a local ``.safetensors`` or legacy ``.pt`` file, or a hub reference
    ``"owner/repo/file.safetensors"`` (downloaded through huggingface_hub's cache; offline mode honoured).

    >>> repo = "keenanpepper/selfie-adapters-llama-3.1-8b-instruct"
    >>> adapter = load_adapter(f"{repo}/goodfire-sae-scalar-affine.safetensors")
    """
    path = resolve_file(source)
    if path.suffix in (".pt", ".pth", ".bin"):
        adapter = _load_legacy(path, normalize_input)
    else:
        state, meta = read_safetensors(path)
        if meta.get("selfie_artifact", "adapter") != "adapter":  # e.g. a reconstructor (reconstruct/artifact.py)
            raise SelfieError(f"{path.name} is a {meta['selfie_artifact']}, not an adapter; pass it with "
                              f"--{meta['selfie_artifact']} (it maps labels back to vectors)")
        adapter = build_from_state(state, meta, path.name, normalize_input)
    return adapter.to(device)


def _load_legacy(path: Path, normalize_input: bool | None) -> Adapter:
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or "projection_state" not in ckpt:
        raise SelfieError(f"{path.name}: a legacy checkpoint must be a dict with 'projection_state' and "
                          "'config'; re-save it as .safetensors")
    config = ckpt.get("config") or {}
    proj_cfg = dict(config.get("projection", {})) if isinstance(config, dict) else {}
    meta = {"config_json": json.dumps(config, default=str),
            "model_name": str((config.get("model") or {}).get("name", "")) if isinstance(config, dict) else ""}
    if proj_cfg.get("type"):
        meta["projection_type"] = str(proj_cfg["type"])
    for key in ("model_dim", "global_step", "best_val_loss", "checkpoint_format_version"):
        if ckpt.get(key) is not None:
            meta[key] = str(ckpt[key])
    state = {k.removeprefix("projection."): v for k, v in ckpt["projection_state"].items()}
    return build_from_state(state, meta, path.name, normalize_input)

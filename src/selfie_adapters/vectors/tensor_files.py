"""Vectors and mean vectors stored in files: ``.safetensors``, ``.pt`` (weights only), ``.npy``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import SelfieError, first_line
from ..files import check_finite, load_torch, read_safetensors, resolve_file, save_tensors


def load_vectors(path: str | os.PathLike, key: str | None = None) -> torch.Tensor:
    """(N, d) fp32 vectors from ``.safetensors`` / ``.pt`` (weights only) / ``.npy``; ``key`` picks a tensor."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"vectors file not found: {path}")
    if path.suffix == ".npy":
        if key is not None:
            raise SelfieError(f"--key {key!r} does not apply to {path.name}: a .npy file holds one array")
        try:
            t = torch.from_numpy(np.load(path, allow_pickle=False))
        except (ValueError, EOFError, OSError) as e:
            raise SelfieError(f"{path.name} is not a plain numeric .npy array ({first_line(e)})") from None
    elif path.suffix in (".pt", ".pth"):
        obj = load_torch(path)
        t = _pick(obj if isinstance(obj, dict) else {"": obj}, key, path.name)
    else:
        state, _ = read_safetensors(path)
        t = _pick(state, key, path.name)
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise SelfieError(f"{path.name}: expected a float tensor of shape (N, d), got {type(t).__name__}")
    t = t.float()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise SelfieError(f"{path.name}: expected a non-empty (N, d) or (d,) tensor, got shape {tuple(t.shape)}")
    check_finite(t, f"vectors in {path.name}")
    return t


def _pick(state: dict, key: str | None, name: str):
    if key is not None:
        if key not in state:
            raise SelfieError(f"{name} has no tensor {key!r}; keys: {sorted(state)}")
        return state[key]
    if len(state) != 1:
        raise SelfieError(f"{name} holds several tensors {sorted(state)}; pick one with --key")
    return next(iter(state.values()))


def load_mean_vectors(path: str | os.PathLike, layer: int | None = None) -> dict[int, torch.Tensor]:
    """Mean vectors → {layer: (d,) fp32}: ``mean-vectors.safetensors`` (``layer_{L}`` keys), or the
    reference's bare-tensor ``…_l{L}_mean.pt`` (layer from the file name, else ``layer``).

    >>> load_mean_vectors("wiki_l19_mean.pt")[19].shape
    torch.Size([4096])
    """
    p = resolve_file(path)
    if p.suffix in (".pt", ".pth", ".bin"):
        return means_from_torch(load_torch(p), p.name, layer)
    state, _ = read_safetensors(p)
    return _layer_means(state, p.name)


def means_from_torch(obj, name: str, layer: int | None = None) -> dict[int, torch.Tensor]:
    """A loaded ``.pt`` mean file: a bare (d,) tensor (the reference's format) or {``layer_L`` | L: (d,)}."""
    if torch.is_tensor(obj):
        vec = obj.reshape(-1) if obj.dim() == 2 and obj.shape[0] == 1 else obj
        if vec.dim() != 1:
            raise SelfieError(f"{name} holds a tensor of shape {tuple(obj.shape)}; a mean vector has shape (d,)")
        found = re.search(r"_l(\d+)(?:_mean)?\.[a-z]+$", name)
        if found is None and layer is None:
            raise SelfieError(f"{name} holds one mean vector but its name does not say the layer (the "
                              "reference names them ..._l{L}_mean.pt); pass the layer (--layer L)")
        return _layer_means({f"layer_{int(found.group(1)) if found else layer}": vec}, name)
    if isinstance(obj, dict):
        return _layer_means({k if isinstance(k, str) else f"layer_{k}": v for k, v in obj.items()}, name)
    raise SelfieError(f"{name} holds a {type(obj).__name__}; expected a mean-vector tensor or {{layer_L: tensor}}")


def _layer_means(state: dict, name: str) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for key, t in state.items():
        if key.startswith("layer_") and key[6:].isdigit() and torch.is_tensor(t):
            check_finite(t, f"mean vector {key}")
            out[int(key[6:])] = t.float()
    if not out:
        raise SelfieError(f"{name}: no 'layer_<L>' tensors found (keys: {sorted(map(str, state))})")
    return out


def save_mean_vectors(means: dict[int, torch.Tensor], path: str | os.PathLike, **metadata: str) -> Path:
    """Write {layer: (d,)} as ``layer_{L}`` fp32 tensors (atomic)."""
    return save_tensors({f"layer_{k}": v for k, v in means.items()}, path, metadata)

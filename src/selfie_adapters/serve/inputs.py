"""Vectors on the wire: JSON float lists or base64 little-endian fp32, checked before any model work."""

from __future__ import annotations

import base64
import binascii

import torch

from .limits import RequestError


def decode_vectors(values: list | None, b64: str | None, dim: int, field: str = "vectors") -> torch.Tensor:
    """(N, d) fp32 from ``values`` (one vector or a list of them) or ``b64`` (N·d fp32, row-major)."""
    if (values is None) == (b64 is None):
        raise RequestError(f"give exactly one of '{field}' (JSON floats) or '{field}_b64' (base64 fp32)")
    if b64 is not None:
        t = _from_base64(b64, dim, field)
    else:
        try:
            t = torch.tensor(values, dtype=torch.float32)
        except (ValueError, TypeError):
            raise RequestError(f"'{field}' must be a list of {dim} floats or a list of such lists "
                               "(rows of different lengths?)") from None
        if t.dim() == 1:
            t = t[None]
    if t.dim() != 2 or t.shape[-1] != dim or len(t) == 0:
        raise RequestError(f"'{field}' must have shape (N, {dim}) — the model's hidden size — got {tuple(t.shape)}")
    bad = (~torch.isfinite(t)).any(dim=-1).nonzero()
    if len(bad):
        raise RequestError(f"'{field}' row {int(bad[0])} contains NaN or infinite values")
    return t


def _from_base64(text: str, dim: int, field: str) -> torch.Tensor:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"'{field}_b64' is not valid base64") from None
    if not raw or len(raw) % (4 * dim):
        raise RequestError(f"'{field}_b64' holds {len(raw)} bytes; expected a positive multiple of "
                           f"4 × {dim} (little-endian fp32 rows of the model's hidden size)")
    return torch.frombuffer(bytearray(raw), dtype=torch.float32).view(-1, dim)


def encode_tensor(t: torch.Tensor, encoding: str) -> dict:
    """``{"shape", "values"}`` (nested floats) or ``{"shape", "b64"}`` (little-endian fp32, row-major)."""
    t = t.detach().float().cpu().contiguous()
    if encoding == "base64":
        return {"shape": list(t.shape), "b64": base64.b64encode(t.numpy().astype("<f4").tobytes()).decode()}
    return {"shape": list(t.shape), "values": t.tolist()}

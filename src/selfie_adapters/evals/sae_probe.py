"""Read one SAE latent without encoding all of them.

An SAE here is any object with ``W_enc`` (d, m), ``b_enc`` (m,), ``b_dec`` (d,), optionally
``threshold`` (m,) (JumpReLU) and ``W_dec`` (m, d) — sae-lens SAE objects fit. For ReLU and JumpReLU
SAEs latent j depends only on column j:  pre_j = (x − b_dec)·W_enc[:, j] + b_enc[j];
act_j = relu(pre_j), or pre_j·[pre_j > θ_j] for JumpReLU. It *fires* when act_j > 0.
TopK-style SAEs (a latent depends on all others) fall back to the SAE's own ``encode``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SelfieError
from ..files import read_safetensors
from ..vectors.sae import load_sae
from ..vectors.source import VectorSource

COLUMN_ARCHS = ("standard", "relu", "jumprelu")


@dataclass
class LatentProbe:
    """Batched per-row latents: row b reads latent ``latents[b]``. Shapes: w (B, d), b/θ (B,), b_dec (d,)."""

    w: torch.Tensor
    b: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor
    sae: object | None = None  # set for the full-encode fallback
    latents: tuple[int, ...] = ()

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) residual states → (B, T) activation of each row's latent (fp32)."""
        if self.sae is not None:  # fallback: full encode, then pick each row's column
            acts = self.sae.encode(x.to(self.w.dtype))  # (B, T, m)
            idx = torch.tensor(self.latents, device=acts.device)[:, None, None].expand(-1, x.shape[1], 1)
            return acts.gather(-1, idx)[..., 0].float()
        pre = torch.einsum("btd,bd->bt", x.float() - self.b_dec, self.w) + self.b[:, None]  # (B, T)
        return torch.where(pre > self.threshold[:, None], pre, torch.zeros_like(pre)).clamp_min(0)

    def select(self, rows: list[int]) -> LatentProbe:
        """The probe for a subset of batch rows (e.g. the conversations that have content tokens)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.w.device)
        return LatentProbe(self.w[idx], self.b[idx], self.b_dec, self.threshold[idx], self.sae,
                           tuple(self.latents[i] for i in rows))


def sae_architecture(sae) -> str:
    cfg = getattr(sae, "cfg", None)
    arch = getattr(sae, "architecture", None) or getattr(cfg, "architecture", None)
    if callable(arch):
        arch = arch()
    if arch is None:
        arch = "jumprelu" if getattr(sae, "threshold", None) is not None else "standard"
    return str(arch).lower()


def sae_size(sae) -> tuple[int, int]:
    """(d_in, d_sae) from ``W_enc``; a clear error if the object is not an SAE."""
    W = getattr(sae, "W_enc", None)
    if not isinstance(W, torch.Tensor) or W.dim() != 2 or getattr(sae, "b_enc", None) is None \
            or getattr(sae, "b_dec", None) is None:
        raise SelfieError(f"{type(sae).__name__} is not an SAE: expected tensors W_enc (d, m), b_enc (m,), "
                          "b_dec (d,) (an sae-lens SAE, or see selfie_adapters.evals.SimpleSAE)")
    return int(W.shape[0]), int(W.shape[1])


def latent_probe(sae, latents: list[int], device: torch.device | str | None = None) -> LatentProbe:
    """Per-row probe for ``latents`` (one per batch row), reading only those encoder columns when possible."""
    _, m = sae_size(sae)
    bad = [j for j in latents if not 0 <= j < m]
    if bad:
        raise SelfieError(f"latent(s) {bad[:5]} out of range; the SAE has {m} latents (0..{m - 1})")
    device = device or sae.W_enc.device
    idx = torch.tensor(latents, dtype=torch.long, device=sae.W_enc.device)
    with torch.no_grad():
        w = sae.W_enc.detach().index_select(1, idx).T.float().to(device)  # (B, d)
        b = sae.b_enc.detach()[idx].float().to(device)
        b_dec = sae.b_dec.detach().float().to(device)
        if not getattr(getattr(sae, "cfg", None), "apply_b_dec_to_input", True):
            b_dec = torch.zeros_like(b_dec)
        thr = getattr(sae, "threshold", None)
        thr = torch.zeros_like(b) if thr is None else thr.detach()[idx].float().to(device)
    arch = sae_architecture(sae)
    fallback = sae if arch not in COLUMN_ARCHS else None
    if fallback is not None and not callable(getattr(sae, "encode", None)):
        raise SelfieError(f"SAE architecture {arch!r} needs the SAE's own encode(); supported without it: "
                          f"{', '.join(COLUMN_ARCHS)}")
    return LatentProbe(w, b, b_dec, thr, fallback, tuple(latents))


def sae_layer(sae) -> int | None:
    """The block index an SAE reads (from e.g. ``blocks.19.hook_resid_post``), or None if unknown."""
    cfg = getattr(sae, "cfg", None)
    for obj in (sae, cfg, getattr(cfg, "metadata", None)):
        layer = getattr(obj, "layer", None)
        if isinstance(layer, int):
            return layer
        for key in ("hook_name", "hook_point"):
            name = getattr(obj, key, None)
            if isinstance(name, str):
                m = re.search(r"(?:blocks|layers)\.(\d+)\.", name)
                if m and "resid_pre" not in name:
                    return int(m.group(1))
                if m:  # resid_pre of block L = residual after block L - 1
                    return int(m.group(1)) - 1
    return None


class SimpleSAE(torch.nn.Module):
    """A minimal ReLU/JumpReLU SAE for tests and local files (tensors W_enc, b_enc, b_dec[, threshold, W_dec])."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                 threshold: torch.Tensor | None = None, W_dec: torch.Tensor | None = None,
                 layer: int | None = None) -> None:
        super().__init__()
        self.W_enc, self.b_enc, self.b_dec = W_enc, b_enc, b_dec
        self.threshold = threshold
        self.W_dec = W_enc.T.contiguous() if W_dec is None else W_dec
        self.layer = layer

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """All latents: (..., d) → (..., m)."""
        pre = (x.float() - self.b_dec) @ self.W_enc + self.b_enc
        thr = 0.0 if self.threshold is None else self.threshold
        return torch.where(pre > thr, pre, torch.zeros_like(pre)).clamp_min(0)

    @classmethod
    def load(cls, path, layer: int | None = None) -> SimpleSAE:
        """From a .safetensors file with tensors W_enc, b_enc, b_dec (and optional threshold, W_dec)."""
        tensors, meta = read_safetensors(Path(path))
        missing = [k for k in ("W_enc", "b_enc", "b_dec") if k not in tensors]
        if missing:
            raise SelfieError(f"{path}: missing SAE tensor(s) {missing}; found {sorted(tensors)}")
        if layer is None and "layer" in meta:
            layer = int(meta["layer"])
        return cls(tensors["W_enc"], tensors["b_enc"], tensors["b_dec"], tensors.get("threshold"),
                   tensors.get("W_dec"), layer)


def open_sae(source: str | VectorSource, layer: int | None = None):
    """An SAE from a vector-source spec: ``sae-lens:<release>/<sae_id>`` or a local SimpleSAE ``.safetensors``."""
    source = source if isinstance(source, VectorSource) else VectorSource.parse(source)
    if source.is_sae:
        return load_sae(source.sae_release, source.sae_id)
    if source.key:
        raise SelfieError(f"an SAE file holds W_enc, b_enc, b_dec; drop '#{source.key}' from {source}")
    return SimpleSAE.load(source.path, layer)

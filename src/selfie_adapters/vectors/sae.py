"""SAE decoder rows as vectors to describe (sae-lens, the ``sae`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import SelfieError
from .rows import drop_zero_rows

DEAD_LATENT = "dead latent"  # what a zero SAE row is called in warnings
SAE_TENSORS = ("W_enc", "b_enc", "b_dec")  # a local SAE file (``eval generation --sae FILE``) holds these


def sae_rows(W_dec: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """Rows of an SAE decoder (d_sae, d) for ``indices``: (K, d) fp32; bad or no indices are an error."""
    n = W_dec.shape[0]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise SelfieError(f"feature indices {bad[:5]} out of range; the SAE has {n} latents")
    if not indices:
        raise SelfieError("no feature indices given (e.g. --features 0-99)")
    return W_dec[list(indices)].float()  # (K, d)


def decoder_rows(W_dec: torch.Tensor, indices: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """Rows of an SAE decoder (d_sae, d) for ``indices``; zero-norm ("dead") latents skipped with a warning."""
    return drop_zero_rows(sae_rows(W_dec, indices), indices, DEAD_LATENT)


def import_sae_lens(what: str = "SAE features"):
    try:
        import sae_lens
    except ImportError:
        raise SelfieError(f"{what} needs sae-lens: pip install 'selfie-adapters[sae]'") from None
    return sae_lens


def load_sae(release: str, sae_id: str, device: str = "cpu"):
    """An SAE from sae-lens (``sae`` extra), e.g. ``load_sae("goodfire-llama-3.1-8b-instruct", "layer_19")``."""
    SAE = import_sae_lens().SAE
    try:
        sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # unknown release/id or download failure: one line
        raise SelfieError(f"could not load SAE {release}/{sae_id}: {type(e).__name__}: {e}") from None
    return sae[0] if isinstance(sae, tuple) else sae


def sae_decoder_vectors(release: str, sae_id: str, indices: Sequence[int],
                        device: str = "cpu") -> tuple[torch.Tensor, list[int]]:
    """Decoder vectors of SAE latents (dead ones skipped): ((K, d) fp32, kept indices)."""
    sae = load_sae(release, sae_id, device)
    return decoder_rows(sae.W_dec.detach(), indices)


def is_sae_file(path: str | os.PathLike) -> bool:
    """A local ``.safetensors`` SAE (tensors W_enc, b_enc, b_dec[, W_dec, threshold]); reads the header only."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return set(SAE_TENSORS) <= set(f.keys())
    except Exception:  # not a safetensors file: load_vectors says so
        return False


def sae_file_decoder(path: str | os.PathLike) -> torch.Tensor:
    """The decoder rows (d_sae, d) fp32 of a local SAE file: ``W_dec``, else ``W_enc``ᵀ (as ``SimpleSAE``)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
        W = f.get_tensor("W_dec") if "W_dec" in names else f.get_tensor("W_enc").T  # (d_sae, d)
    return W.float().contiguous()

"""The reference implementation's inference API (``selfie_adapters.inference``): ``SelfIEAdapter``.

A ``SelfIEAdapter`` is our ``Adapter`` built the reference's way, ``SelfIEAdapter(path, device=None)``
(device: CUDA when available, else CPU), reading ``.safetensors``, legacy ``.pt`` (weights only) and
hub references. ``get_metadata()``, ``model_dim``, ``config``, ``get_projection_stats()`` and
``transform(x, normalize_input=None)`` behave as there; the output stays on the adapter's device.
"""

from __future__ import annotations

import os

import torch

from ..adapters.artifact import Adapter
from ..adapters.artifact import load_adapter as _load


class SelfIEAdapter(Adapter):
    """A trained adapter loaded for inference, with the reference's constructor.

    >>> adapter = SelfIEAdapter("checkpoint.pt")
    >>> soft_tokens = adapter.transform(sae_vectors)
    >>> adapter.get_metadata()["num_parameters"]
    4097
    """

    def __init__(self, checkpoint_path: str | os.PathLike, device: str | torch.device | None = None) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = _load(checkpoint_path, device=device)
        super().__init__(loaded.projection, loaded.metadata)
        self.checkpoint_path = str(checkpoint_path)
        meta = self.get_metadata()
        self.checkpoint_format_version = meta["checkpoint_format_version"]
        self.global_step, self.best_val_loss = meta.get("global_step"), meta.get("best_val_loss")

    def transform(self, vectors: torch.Tensor, normalize_input: bool | None = None) -> torch.Tensor:
        """(N, d) or (d,) → soft tokens in the input's dtype, on the adapter's device."""
        return super().transform(vectors.to(self.device), normalize_input=normalize_input)

    def __repr__(self) -> str:
        return (f"SelfIEAdapter(type={self.kind}, dim={self.dim}, params={self.num_parameters():,}, "
                f"device={self.device})")


def load_adapter(checkpoint_path: str | os.PathLike, device: str | torch.device | None = None) -> SelfIEAdapter:
    """The reference's ``load_adapter``: ``SelfIEAdapter(checkpoint_path, device)``."""
    return SelfIEAdapter(checkpoint_path, device)


__all__ = ["SelfIEAdapter", "load_adapter"]

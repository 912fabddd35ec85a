"""``VectorSource``: the one syntax every command takes for vectors (files, ``FILE#KEY``, SAEs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SelfieError
from .sae import DEAD_LATENT, import_sae_lens, is_sae_file, load_sae, sae_file_decoder, sae_rows
from .tensor_files import load_vectors

SAE_PREFIX = "sae-lens:"


@dataclass(frozen=True)
class VectorSource:
    """Where vectors come from, in the one syntax every command takes (``describe --vectors``,
    ``eval loss --vectors``, ``data.vectors_file``, ``eval generation --sae``):
    ``FILE`` (.safetensors / .pt / .npy), ``FILE#KEY`` (one tensor of several),
    ``sae-lens:<release>/<sae_id>`` (an SAE's decoder rows, ``sae`` extra) or a local SAE ``FILE``
    (.safetensors with W_enc, b_enc, b_dec[, W_dec]: its decoder rows).

    >>> VectorSource.parse("sae-lens:goodfire-llama-3.1-8b-instruct/layer_19").load([0, 5])[1]
    [0, 5]
    """

    path: str | None = None
    key: str | None = None
    sae_release: str | None = None
    sae_id: str | None = None

    @classmethod
    def parse(cls, spec: str | os.PathLike, key: str | None = None) -> VectorSource:
        """Read ``spec``; ``key`` (the old ``--key`` flag) picks the tensor when the spec names none."""
        spec = str(spec)
        if spec.startswith(SAE_PREFIX):
            release, _, sae_id = spec[len(SAE_PREFIX):].partition("/")
            if not release or not sae_id:
                raise SelfieError(f"an SAE source must be {SAE_PREFIX}<release>/<sae_id>, got {spec!r} "
                                  f"(e.g. {SAE_PREFIX}goodfire-llama-3.1-8b-instruct/layer_19)")
            return cls(sae_release=release, sae_id=sae_id)
        path, _, inline_key = (spec, "", "") if Path(spec).exists() else spec.partition("#")
        if inline_key and key and inline_key != key:
            raise SelfieError(f"{spec!r} names tensor {inline_key!r} but --key says {key!r}; give one")
        return cls(path=path, key=inline_key or key)

    @classmethod
    def sae(cls, release: str, sae_id: str | None) -> VectorSource:
        """The decoder rows of an sae-lens SAE (the old ``--sae-release R --sae-id ID`` spelling)."""
        return cls.parse(f"{SAE_PREFIX}{release}/{sae_id or ''}")

    @property
    def is_sae(self) -> bool:
        return self.sae_release is not None

    def __str__(self) -> str:
        if self.is_sae:
            return f"{SAE_PREFIX}{self.sae_release}/{self.sae_id}"
        return f"{self.path}#{self.key}" if self.key else str(self.path)

    def relative_to(self, base_dir: str | os.PathLike) -> VectorSource:
        """A relative file path taken from ``base_dir`` (where a config file lives), unless it exists as is."""
        if self.is_sae or Path(self.path).expanduser().is_absolute() or Path(self.path).exists():
            return self
        return VectorSource(path=str(Path(base_dir) / self.path), key=self.key)

    def check(self, what: str = "vectors", name: str | None = None) -> None:
        """Cheap checks before a model is loaded: the file exists, or sae-lens is installed.
        ``name``: how the file was given (before ``relative_to``), for the message."""
        if self.is_sae:
            import_sae_lens(f"{what}={self}")
        elif not Path(self.path).expanduser().is_file():
            raise SelfieError(f"vectors file not found: {name or self.path} ({what})")

    @property
    def row_name(self) -> str:
        """What one row is called in messages (a zero SAE row is a dead latent)."""
        return DEAD_LATENT if self.is_sae or self.is_sae_file else "vector"

    @property
    def is_sae_file(self) -> bool:
        """A local SAE ``.safetensors`` given without ``#KEY``: its rows are the decoder's."""
        return not self.is_sae and self.key is None and is_sae_file(self.path)

    def load(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        """((N, d) fp32 vectors, their row indices); ``indices`` picks rows. Zero rows are kept: describing
        drops them (``drop_zero_rows``), training keeps its table whole."""
        if self.is_sae or self.is_sae_file:
            W_dec = (load_sae(self.sae_release, self.sae_id).W_dec.detach() if self.is_sae
                     else sae_file_decoder(self.path))  # (d_sae, d)
            if indices is None:
                return W_dec.float().cpu(), list(range(len(W_dec)))
            return sae_rows(W_dec, indices), list(indices)
        t = load_vectors(self.path, self.key)
        if indices is None:
            return t, list(range(len(t)))
        bad = [i for i in indices if not 0 <= i < len(t)]
        if bad:
            raise SelfieError(f"row indices {bad[:5]} out of range; {self.path} has {len(t)} rows")
        return t[list(indices)], list(indices)

"""Which rows are worth describing: the one place zero rows are dropped, for every vector source."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..errors import SelfieError


def drop_zero_rows(vectors: torch.Tensor, indices: Sequence[int], what: str = "vector"
                   ) -> tuple[torch.Tensor, list[int]]:
    """Rows with a zero norm say nothing about the model: skip them with a warning; none left is an error."""
    alive = vectors.abs().amax(dim=-1) > 0 if vectors.numel() else torch.zeros(len(vectors), dtype=torch.bool)
    dead = [i for i, a in zip(indices, alive.tolist()) if not a]
    if dead:
        warnings.warn(f"skipping {len(dead)} zero {what}(s) (nothing to describe): {dead[:10]}", stacklevel=2)
    kept = [i for i, a in zip(indices, alive.tolist()) if a]
    if not kept:
        raise SelfieError(f"no {what}s left to describe: all {len(dead)} are zero")
    return vectors[alive], kept

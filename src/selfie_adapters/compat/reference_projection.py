"""The reference implementation's projection API (``selfie_adapters.projection``), over our kinds.

Scripts written for the reference import ``ScalarAffineProjection`` & co. and
``create_projection_module`` from here. Each class is our registered kind (``projections.py``, the
one registry) with the reference's constructor ``(dim, normalize_input, device[, rank])``,
``initialize_weights`` and statistics methods, so its state dict, forward and file format are ours.
Errors are ``SelfieError`` (a ``ValueError``, as the reference raises).
"""

from __future__ import annotations

import math

import torch

from ..adapters.kinds import (
    INIT_FACTOR,
    INIT_SCALE,
    FullRank,
    LowRankOnly,
    Projection,
    ScalarAffine,
    ScalarAffinePlusLowRank,
    ScaleOnly,
    build_projection,
)
from ..adapters.stats import low_rank_singular_values, projection_stats
from ..errors import SelfieError


class ProjectionModule(Projection):
    """Base of the reference-style classes: its constructor and methods on top of our kinds."""

    def __init__(self, dim: int, normalize_input: bool, device: torch.device | str | None = None,
                 rank: int | None = None) -> None:
        super().__init__(dim, normalize_input=normalize_input, init_scale=1.0, rank=rank)  # log_scale 0, as there
        if device is not None:
            self.to(device)

    def initialize_weights(self, init_scale: float, low_rank_init_factor: float | None = None) -> None:
        """Re-initialise as a fresh adapter with ``init_scale`` (and the low-rank factor, required for U, V)."""
        if self.needs_rank and low_rank_init_factor is None:
            raise SelfieError(f"{self.kind} requires 'low_rank_init_factor'; set config.projection."
                              "low_rank_init_factor to a positive float (e.g. 0.01)")
        fresh = build_projection(self.kind, self.dim, rank=self.rank, init_scale=init_scale,
                                 init_factor=low_rank_init_factor or INIT_FACTOR)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(getattr(fresh, name))
        self.init_scale, self.init_factor = init_scale, low_rank_init_factor or self.init_factor

    def get_scale(self) -> float:
        return projection_stats(self)["scale"]

    def get_bias_norm(self) -> float:
        return projection_stats(self)["bias_norm"]

    def get_weight_norm(self) -> float:
        return projection_stats(self)["weight_norm"]

    def get_low_rank_norm(self) -> float:
        return projection_stats(self)["low_rank_norm"]

    def get_singular_values(self) -> torch.Tensor:
        """Singular values of W, or of UVᵀ (via its r×r core; the reference reports UᵀV's instead)."""
        with torch.no_grad():
            if hasattr(self, "weight"):
                return torch.linalg.svdvals(self.weight.float())
        return low_rank_singular_values(self)

    def get_low_rank_to_diagonal_ratio(self) -> float:
        """‖UVᵀ‖_F / (√d · scale): near 0 while the low-rank part is unused."""
        stats = projection_stats(self)
        diagonal = math.sqrt(self.dim) * stats["scale"]
        return float("inf") if diagonal < 1e-8 else stats["low_rank_norm"] / diagonal


class ScaleOnlyProjection(ProjectionModule, ScaleOnly):
    """scale · x"""


class ScalarAffineProjection(ProjectionModule, ScalarAffine):
    """scale · x + bias"""


class FullRankAffineProjection(ProjectionModule, FullRank):
    """x · Wᵀ + bias"""


class LowRankOnlyProjection(ProjectionModule, LowRankOnly):
    """(x · U) · Vᵀ + bias"""

    def __init__(self, dim: int, normalize_input: bool, device: torch.device | str | None, rank: int) -> None:
        super().__init__(dim, normalize_input, device, rank)


class ScalarAffinePlusLowRankProjection(ProjectionModule, ScalarAffinePlusLowRank):
    """scale · x + (x · U) · Vᵀ + bias"""

    def __init__(self, dim: int, normalize_input: bool, device: torch.device | str | None, rank: int) -> None:
        super().__init__(dim, normalize_input, device, rank)


REFERENCE_CLASSES: dict[str, type[ProjectionModule]] = {
    c.kind: c for c in (ScaleOnlyProjection, ScalarAffineProjection, FullRankAffineProjection,
                        LowRankOnlyProjection, ScalarAffinePlusLowRankProjection)}


def create_projection_module(projection_type: str, dim: int, normalize_input: bool,
                             device: torch.device | str | None = None, init_scale: float = INIT_SCALE,
                             low_rank_rank: int | None = None,
                             low_rank_init_factor: float | None = None) -> ProjectionModule:
    """The reference's factory: a freshly initialised projection of ``projection_type``.

    >>> proj = create_projection_module("scalar_affine", 4096, True, "cpu", init_scale=5.0)
    """
    if projection_type not in REFERENCE_CLASSES:
        raise SelfieError(f"Unknown projection type: {projection_type}. Use one of: {', '.join(REFERENCE_CLASSES)}")
    cls = REFERENCE_CLASSES[projection_type]
    if cls.needs_rank and low_rank_rank is None:
        raise SelfieError(f"{projection_type} requires 'low_rank_rank'; set config.projection.low_rank_rank "
                          "to a positive integer (e.g. 64)")
    proj = cls(dim, normalize_input, device, low_rank_rank) if cls.needs_rank else cls(dim, normalize_input, device)
    proj.initialize_weights(init_scale, low_rank_init_factor)
    return proj


__all__ = ["FullRankAffineProjection", "LowRankOnlyProjection", "ProjectionModule", "ScalarAffinePlusLowRankProjection",
           "ScalarAffineProjection", "ScaleOnlyProjection", "create_projection_module", "projection_stats"]

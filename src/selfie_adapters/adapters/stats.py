"""Statistics of an adapter's parameters (scale, norms), as the reference reports them."""

from __future__ import annotations

import torch

from .kinds import Projection


def projection_stats(proj: Projection) -> dict[str, float]:
    """The reference's ``get_projection_stats``: scale, bias/weight norms, ‖UVᵀ‖_F where the kind has them."""
    stats: dict[str, float] = {}
    with torch.no_grad():
        if hasattr(proj, "log_scale"):
            stats["scale"] = proj.log_scale.float().exp().item()
        if hasattr(proj, "bias"):
            stats["bias_norm"] = proj.bias.float().norm().item()
        if hasattr(proj, "weight"):
            stats["weight_norm"] = proj.weight.float().norm().item()
        if hasattr(proj, "U"):
            stats["low_rank_norm"] = (proj.U.float() @ proj.V.float().T).norm().item()
    return stats

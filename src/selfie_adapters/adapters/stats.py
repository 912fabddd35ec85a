"""Statistics of an adapter's parameters (scale, norms, singular values), as the reference reports them
and the trainer logs them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .kinds import Projection

STATS = ("scale", "bias_norm", "weight_norm", "low_rank_norm")


def projection_stats(proj: Projection, which: Sequence[str] = STATS) -> dict[str, float]:
    """The reference's ``get_projection_stats``: scale, bias/weight norms, ‖UVᵀ‖_F where the kind has them
    (``which`` picks some; the trainer logs scale and bias norm every step)."""
    stats: dict[str, float] = {}
    with torch.no_grad():
        if "scale" in which and hasattr(proj, "log_scale"):
            stats["scale"] = proj.log_scale.float().exp().item()
        if "bias_norm" in which and hasattr(proj, "bias"):
            stats["bias_norm"] = proj.bias.float().norm().item()
        if "weight_norm" in which and hasattr(proj, "weight"):
            stats["weight_norm"] = proj.weight.float().norm().item()
        if "low_rank_norm" in which and hasattr(proj, "U"):
            stats["low_rank_norm"] = (proj.U.float() @ proj.V.float().T).norm().item()
    return stats


def low_rank_singular_values(proj: Projection) -> torch.Tensor:
    """Singular values of UVᵀ (d×d) through its r×r core: UVᵀ = Q_U·R_U·R_Vᵀ·Q_Vᵀ has those of R_U·R_Vᵀ."""
    with torch.no_grad():
        r_u, r_v = torch.linalg.qr(proj.U.float())[1], torch.linalg.qr(proj.V.float())[1]
        return torch.linalg.svdvals(r_u @ r_v.T)

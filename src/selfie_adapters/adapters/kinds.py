"""Adapter kinds: maps from a model vector x (d,) to a soft token (d,).

Every kind registers itself in ``PROJECTIONS``; the CLI, docs and tests read that registry.
Tensor names match the published adapter files. The transform runs in fp32 and
returns the caller's dtype.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from ..errors import SelfieError
from .kind_names import KIND_NAMES

PROJECTIONS: dict[str, type[Projection]] = {}
NORM_EPS = 1e-8
INIT_SCALE = 30.0  # default init_scale (the reference's); files without one were trained with it
INIT_FACTOR = 0.01  # default low_rank_init_factor


def register(cls: type[Projection]) -> type[Projection]:
    """Class decorator: add an adapter kind to the registry under ``cls.kind`` (named in ``kind_names``)."""
    if KIND_NAMES.get(cls.kind) is not cls.trainable:
        raise TypeError(f"adapter kind {cls.kind!r} (trainable={cls.trainable}) is not listed so in "
                        "adapters/kind_names.py KIND_NAMES; add it there too")
    PROJECTIONS[cls.kind] = cls
    return cls


def l2_normalize(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """x/‖x‖ along the last axis without overflow or underflow: each row is first divided by its
    largest |entry| (so ‖·‖ of a 1e30-sized fp32 vector stays finite); zero rows stay zero."""
    peak = x.abs().amax(dim=-1, keepdim=True)  # (..., 1)
    x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class Projection(nn.Module):
    """Base class: optional L2 input normalisation, then the kind's map ``_map`` in fp32."""

    kind: ClassVar[str]
    needs_rank: ClassVar[bool] = False  # has U, V of width ``rank``
    trainable: ClassVar[bool] = True  # has parameters to train

    def __init__(self, dim: int, *, normalize_input: bool = True, init_scale: float = INIT_SCALE,
                 rank: int | None = None, init_factor: float = INIT_FACTOR) -> None:
        super().__init__()
        if dim <= 0:
            raise SelfieError(f"adapter dimension must be positive, got {dim}")
        if self.needs_rank and (rank is None or rank <= 0):
            raise SelfieError(f"projection {self.kind!r} needs a positive low_rank_rank, got {rank}")
        self.dim, self.normalize_input, self.init_scale = dim, normalize_input, init_scale
        self.rank, self.init_factor = rank, init_factor

    def forward(self, x: torch.Tensor, normalize_input: bool | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()  # (..., d)
        if self.normalize_input if normalize_input is None else normalize_input:
            x = l2_normalize(x)
        return self._map(x).to(dtype)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _log_scale(self) -> nn.Parameter:
        """log(init_scale), so a fresh adapter starts as ``init_scale · x``."""
        return self._param(1, fill=math.log(self.init_scale))

    def _param(self, *shape: int, fill: float | None = None, std: float | None = None) -> nn.Parameter:
        t = torch.empty(*shape, dtype=torch.float32)
        if fill is not None:
            t.fill_(fill)
        else:
            t.normal_(0.0, std)
        return nn.Parameter(t)


@register
class Identity(Projection):
    """No parameters: the untrained SelfIE baseline (combine with normalisation and a scale)."""

    kind = "identity"
    trainable = False

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register
class ScaleOnly(Projection):
    """exp(log_scale) · x"""

    kind = "scale_only"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self.log_scale = self._log_scale()

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.float().exp() * x


@register
class ScalarAffine(ScaleOnly):
    """exp(log_scale) · x + bias"""

    kind = "scalar_affine"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self.bias = self._param(dim, fill=0.0)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return super()._map(x) + self.bias.float()


class _LowRank(Projection):
    """Shared low-rank term (x·U)·Vᵀ with U, V ~ N(0, init_scale·factor/√r)."""

    needs_rank = True

    def _init_low_rank(self) -> None:
        std = self.init_scale * self.init_factor / math.sqrt(self.rank)
        self.U = self._param(self.dim, self.rank, std=std)  # (d, r)
        self.V = self._param(self.dim, self.rank, std=std)  # (d, r)

    def _low_rank(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.U.float()) @ self.V.float().T  # (..., r) -> (..., d)


@register
class ScalarAffinePlusLowRank(_LowRank):
    """exp(log_scale) · x + (x·U)·Vᵀ + bias"""

    kind = "scalar_affine_plus_low_rank"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self.log_scale = self._log_scale()
        self._init_low_rank()
        self.bias = self._param(dim, fill=0.0)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_scale.float().exp() * x + self._low_rank(x) + self.bias.float()


@register
class LowRankOnly(_LowRank):
    """(x·U)·Vᵀ + bias"""

    kind = "low_rank_only"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self._init_low_rank()
        self.bias = self._param(dim, fill=0.0)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return self._low_rank(x) + self.bias.float()


@register
class FullRank(Projection):
    """x·Wᵀ + bias, W ~ N(0, init_scale·√(2/(2d)))"""

    kind = "full_rank"

    def __init__(self, dim: int, **kw) -> None:
        super().__init__(dim, **kw)
        self.weight = self._param(dim, dim, std=self.init_scale * math.sqrt(2.0 / (2 * dim)))  # (d, d)
        self.bias = self._param(dim, fill=0.0)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.float().T + self.bias.float()


if list(PROJECTIONS) != list(KIND_NAMES):  # same kinds, same order: CLI help lists what exists
    raise TypeError(f"adapters/kind_names.py lists {list(KIND_NAMES)} but kinds.py registers {list(PROJECTIONS)}")


def trainable_kinds() -> tuple[str, ...]:
    """The registered kinds that have parameters, in registry order."""
    return tuple(k for k, cls in PROJECTIONS.items() if cls.trainable)


def build_projection(kind: str, dim: int, **kwargs) -> Projection:
    """Make a fresh adapter of a registered kind, e.g. ``build_projection("scalar_affine", 4096)``."""
    if kind not in PROJECTIONS:
        raise SelfieError(f"unknown projection type {kind!r}; valid: {', '.join(PROJECTIONS)}")
    return PROJECTIONS[kind](dim, **kwargs)

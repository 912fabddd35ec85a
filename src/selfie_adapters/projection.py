"""The reference implementation's import path ``selfie_adapters.projection`` (see ``compat.reference_projection``)."""

from .adapters.stats import projection_stats
from .compat.reference_projection import (
           FullRankAffineProjection,
           LowRankOnlyProjection,
           ProjectionModule,
           ScalarAffinePlusLowRankProjection,
           ScalarAffineProjection,
           ScaleOnlyProjection,
           create_projection_module,
)

__all__ = ["FullRankAffineProjection", "LowRankOnlyProjection", "ProjectionModule", "ScalarAffinePlusLowRankProjection",
           "ScalarAffineProjection", "ScaleOnlyProjection", "create_projection_module", "projection_stats"]

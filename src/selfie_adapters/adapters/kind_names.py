"""The adapter kinds by name, importable without torch: what CLI choices and help text list.

``kinds.py`` holds the registry (``PROJECTIONS``) and refuses at import to register a kind that is
not here or to leave one of these unregistered, so the two cannot drift apart.
"""

from __future__ import annotations

# kind → has parameters to train; in registry order
KIND_NAMES: dict[str, bool] = {
    "identity": False,
    "scale_only": True,
    "scalar_affine": True,
    "scalar_affine_plus_low_rank": True,
    "low_rank_only": True,
    "full_rank": True,
}


def trainable_kind_names() -> tuple[str, ...]:
    """The kinds that have parameters, in registry order (same as ``kinds.trainable_kinds()``)."""
    return tuple(k for k, trainable in KIND_NAMES.items() if trainable)

"""Evaluations: topic retrieval, generation scoring of SAE latents, bridge-entity heatmaps."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# imported on first use: the CLI reads evals.protocols / evals.report without loading torch
_EXPORTS: dict[str, str] = {
    "bridge_eval": ".bridge", "bridge_records": ".bridge", "write_bridge_report": ".bridge",
    "DEFAULT_PROMPT": ".conversations", "content_token_mask": ".conversations",
    "generate_and_score": ".generation", "generation_eval": ".generation", "labels_from_adapter": ".generation",
    "score_conversations": ".generation", "summarize": ".generation",
    "DEFAULT_MODEL": ".protocols", "STRATEGIES": ".protocols",
    "LabelRow": ".retrieval", "Topic": ".retrieval", "load_labels": ".retrieval", "load_topics": ".retrieval",
    "retrieval_eval": ".retrieval", "sentence_embedder": ".retrieval",
    "LatentProbe": ".sae_probe", "SimpleSAE": ".sae_probe", "latent_probe": ".sae_probe", "sae_layer": ".sae_probe",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .bridge import bridge_eval, bridge_records, write_bridge_report  # noqa: F401
    from .conversations import DEFAULT_PROMPT, content_token_mask  # noqa: F401
    from .generation import (  # noqa: F401
        generate_and_score,
        generation_eval,
        labels_from_adapter,
        score_conversations,
        summarize,
    )
    from .protocols import DEFAULT_MODEL, STRATEGIES  # noqa: F401
    from .retrieval import (  # noqa: F401
        LabelRow,
        Topic,
        load_labels,
        load_topics,
        retrieval_eval,
        sentence_embedder,
    )
    from .sae_probe import LatentProbe, SimpleSAE, latent_probe, sae_layer  # noqa: F401

"""Evaluations: topic retrieval, generation scoring of SAE latents, bridge-entity heatmaps."""

from .bridge import bridge_eval, bridge_records, write_bridge_report
from .generation import (
    DEFAULT_PROMPT,
    content_token_mask,
    generate_and_score,
    generation_eval,
    labels_from_adapter,
    score_conversations,
    summarize,
)
from .retrieval import (
    DEFAULT_MODEL,
    STRATEGIES,
    LabelRow,
    Topic,
    load_labels,
    load_topics,
    retrieval_eval,
    sentence_embedder,
)
from .sae_probe import LatentProbe, SimpleSAE, latent_probe, sae_layer

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_PROMPT", "STRATEGIES", "LabelRow", "LatentProbe", "SimpleSAE", "Topic",
    "bridge_eval", "bridge_records", "content_token_mask", "generate_and_score", "generation_eval",
    "labels_from_adapter", "latent_probe", "load_labels", "load_topics", "retrieval_eval", "sae_layer",
    "score_conversations", "sentence_embedder", "summarize", "write_bridge_report",
]

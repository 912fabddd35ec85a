"""Evaluations: topic retrieval, generation scoring of SAE latents, bridge-entity heatmaps."""

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

__all__ = [
    "DEFAULT_MODEL", "STRATEGIES", "LabelRow", "Topic", "load_labels", "load_topics", "retrieval_eval",
    "sentence_embedder",
]

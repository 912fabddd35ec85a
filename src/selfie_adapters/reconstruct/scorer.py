"""Score labels against their vectors with a reconstructor: batched, one truncated forward per batch of
labels, each distinct label read once (descriptions repeat a lot)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..adapters.guard import check_model
from ..errors import SelfieError
from ..files import check_finite
from ..models.tree import model_device
from .artifact import Reconstructor
from .reader import read_states
from .scores import BEST_BY, score, score_rows


class Scorer:
    """A frozen model + tokenizer + reconstructor → round-trip scores of (label, vector) pairs.

    >>> scorer = Scorer(model, tok, load_reconstructor("rec.safetensors"))
    >>> scorer.score(["Paris, a city"], vectors[:1])[0]["cos"]
    0.83
    """

    def __init__(self, model, tokenizer, reconstructor: Reconstructor, *, batch_size: int = 64,
                 allow_model_mismatch: bool = False, cache_size: int = 100_000) -> None:
        check_model(reconstructor, model, allow_model_mismatch, what="reconstructor")
        self.model, self.tokenizer, self.rec = model, tokenizer, reconstructor
        self.rec.head.to(model_device(model))
        self.batch_size, self.cache_size = batch_size, cache_size
        self._cache: dict[str, torch.Tensor] = {}  # label → predicted vector (d,) on the CPU
        self.labels_read = 0  # labels that went through the model (cache misses)

    def predict(self, labels: Sequence[str]) -> torch.Tensor:
        """(N, d) fp32 predicted vectors of ``labels``."""
        new = list(dict.fromkeys(lab for lab in labels if lab not in self._cache))
        if new:
            states = read_states(self.model, self.tokenizer, new, self.rec.reader, batch_size=self.batch_size)
            pred = self.rec.predict(states.to(model_device(self.model))).cpu()  # (U, d)
            if len(self._cache) + len(new) > self.cache_size:
                self._cache.clear()
            self._cache.update(zip(new, pred))
            self.labels_read += len(new)
        if not labels:
            return torch.empty(0, self.rec.dim)
        return torch.stack([self._cache[lab] for lab in labels])

    def score(self, labels: Sequence[str], vectors: torch.Tensor) -> list[dict[str, float | None]]:
        """One ``{"cos", "centred_cos", "mse_nrm", "fve_nrm"}`` per (label, vector row) pair."""
        if vectors.dim() != 2 or vectors.shape[-1] != self.rec.dim or len(vectors) != len(labels):
            raise SelfieError(f"need {len(labels)} vectors of dimension {self.rec.dim} for the labels, "
                              f"got shape {tuple(vectors.shape)}")
        check_finite(vectors, "vectors to score")
        if not labels:
            return []
        return score_rows(score(self.predict(labels), vectors.float().cpu(), self.rec.target_mean,
                                self.rec.baseline_var))


def add_scores(rows: list[dict], scorer: Scorer, vector_of: Callable[[int], torch.Tensor]) -> list[dict]:
    """``rows`` (with ``index`` and ``label``) with ``"score": {...}`` added; ``vector_of(index)`` → (d,)."""
    if not rows:
        return rows
    vectors = torch.stack([vector_of(r["index"]) for r in rows])
    scores = scorer.score([str(r["label"]) for r in rows], vectors)
    return [{**r, "score": s} for r, s in zip(rows, scores)]


def mark_best(rows: list[dict]) -> list[dict]:
    """Per ``index``, ``"best": true`` on the scored row whose label reconstructs best (lowest mse_nrm;
    ties: the first written), false on the others; rows without a score are left as they are."""
    best: dict[int, tuple[float, int]] = {}
    for n, r in enumerate(rows):
        if isinstance(r.get("score"), dict):
            key = (r["score"][BEST_BY], n)
            if r["index"] not in best or key < best[r["index"]]:
                best[r["index"]] = key
    chosen = {n for _, n in best.values()}
    return [{**r, "best": n in chosen} if isinstance(r.get("score"), dict) else r for n, r in enumerate(rows)]

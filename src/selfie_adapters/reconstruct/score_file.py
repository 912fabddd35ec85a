"""`selfie score`: round-trip scores for every label of a labels file (ours, Neuronpedia's, delphi's)
against the vectors it describes, into an owned JSONL (resumable; the best label per vector marked).

>>> score_labels_file(ScoreRun(model="toy", labels="labels.jsonl", vectors=VectorSource.parse("v.safetensors"),
...                            reconstructor=ReconstructorChoice("rec.safetensors")), "scores.jsonl")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SelfieError
from ..models.loading import load_model
from ..runs.fingerprint import FileInput, model_identity
from ..runs.row_log import JsonlLog
from ..vectors.source import VectorSource
from .choice import ReconstructorChoice
from .label_files import read_label_rows
from .scorer import Scorer, add_scores, mark_best

Progress = Callable[[int, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class ScoreRun:
    """One `selfie score`: labels file, the vectors its indices name, the reconstructor, model settings."""

    model: str
    labels: str | os.PathLike
    vectors: VectorSource
    reconstructor: ReconstructorChoice
    batch_size: int = 64
    dtype: str = "auto"
    device: str | None = None
    allow_model_mismatch: bool = False

    def inputs(self) -> dict:
        labels = Path(self.labels)
        src = self.vectors
        return {"model": model_identity(self.model), "dtype": self.dtype,
                "labels": FileInput(labels) if labels.is_file() else str(labels),
                "vectors": str(src) if src.is_sae else FileInput(src.path), "key": src.key,
                **self.reconstructor.record()}


def score_labels_file(run: ScoreRun, out: str | os.PathLike, *, overwrite: bool = False,
                      progress: Progress | None = None) -> list[dict]:
    """Score every label of ``run.labels`` into ``out``; returns all rows (``best`` marked per index).
    Labels whose index is not a row of the vectors are refused before the model loads."""
    fmt, rows = read_label_rows(run.labels)
    loaded = run.reconstructor.check()
    vectors, _ = run.vectors.load()  # (N, d)
    bad = sorted({r["index"] for r in rows if not 0 <= r["index"] < len(vectors)})
    if bad:
        raise SelfieError(f"{Path(run.labels).name}: label index(es) {bad[:5]} are not rows of the vectors "
                          f"({run.vectors} has {len(vectors)} rows); pass the vectors these labels describe")
    targets = vectors.float()
    if run.reconstructor.mean_vectors is not None:  # as describe --mean-vectors: the vectors described are v − mean
        targets = targets - run.reconstructor.mean()[1]
    used = sorted({r["index"] for r in rows})
    with JsonlLog(out, run.inputs(), command="score", key_fields=("n", "index", "score"),
                  overwrite=overwrite) as log:
        done = log.done_keys(lambda r: r["n"])
        todo = [r for r in rows if r["n"] not in done]
        tick = progress(len(rows), len(rows) - len(todo)) if progress is not None else None
        model, tok = load_model(run.model, dtype=run.dtype, device=run.device)
        rec = run.reconstructor.build(targets[used], model=model, loaded=loaded)
        scorer = Scorer(model, tok, rec, batch_size=run.batch_size, allow_model_mismatch=run.allow_model_mismatch)
        for start in range(0, len(todo), run.batch_size):
            batch = todo[start:start + run.batch_size]
            log.append(add_scores([{**r, "format": fmt} for r in batch], scorer, lambda i: targets[i]))
            if tick is not None:
                tick(len(batch))
        log.rewrite(mark_best(sorted(log.rows, key=lambda r: r["n"])))
        return log.rows


def mean_scores(rows: list[dict], only_best: bool = False) -> dict[str, float]:
    """Mean of each score field over ``rows`` (with ``only_best``: the rows marked best)."""
    picked = [r["score"] for r in rows if isinstance(r.get("score"), dict) and (r.get("best") or not only_best)]
    out = {}
    for key in ("cos", "centred_cos", "mse_nrm", "fve_nrm"):
        vals = [s[key] for s in picked if s.get(key) is not None]
        if vals:
            out[key] = float(torch.tensor(vals, dtype=torch.float64).mean())
    return out

"""The nearest-neighbour baseline: label a held-out vector with the label(s) of its nearest training vector.

No model, no training: cosine similarity after subtracting the training mean (anisotropy-centred; hidden
states share a large common direction that would otherwise dominate every cosine). The rows it writes are
ordinary ``selfie describe`` rows (``index``, ``scale``, ``sample``, ``label``, ``text``, ``closed``; no
``logprob``: nothing was generated) plus ``neighbour`` (the training vector's row), ``rank`` (0 = nearest)
and ``similarity`` (the cosine), so every eval that reads describe output scores the baseline beside the
adapters. ``scale`` is 0: no soft token was made. ``sample`` numbers the labels of the ``k`` neighbours in
order of rank (sample 0: the nearest neighbour's first label, what the evals take as the greedy label).

>>> nearest_labels(NearestRun("labels.json"), "nearest.jsonl")   # held out = the val split
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SelfieError
from ..runs.fingerprint import FileInput
from ..runs.row_log import JsonlLog
from ..training.config import DataConfig
from ..training.data import read_examples
from ..vectors.rows import drop_zero_rows, write_skipped
from ..vectors.source import VectorSource

BASELINE = "nearest-neighbour"
COMMAND = "baseline nearest"  # the command named in OUT.settings.json
KEY_FIELDS = ("index", "scale", "sample")  # as describe's rows
NO_SCALE = 0.0  # the rows' scale: no soft token was made
KEY_CHUNK = 8192  # training vectors compared at once: (query chunk, KEY_CHUNK) similarities in memory
Progress = Callable[[int, int], Callable[[int], None] | None]


@dataclass(frozen=True)
class TrainingSet:
    """The distinct training vectors and their labels: ``vectors[i]`` is row ``rows[i]`` of the labels
    file's vectors, labelled ``labels[i]`` (every label given for that row, in file order, repeats dropped)."""

    vectors: torch.Tensor  # (M, d) fp32
    rows: list[int]
    labels: list[list[str]]

    def mean(self) -> torch.Tensor:
        """(d,) fp32: the training mean, accumulated in fp64."""
        return self.vectors.double().mean(0).float()

    def fingerprint(self) -> str:
        """SHA-256 of the vectors (bytes, shape) and their labels: the same training set, however it was given."""
        h = hashlib.sha256(json.dumps([list(self.vectors.shape), self.rows, self.labels]).encode())
        h.update(self.vectors.contiguous().numpy())  # the buffer itself: no copy of a 65k × d table
        return h.hexdigest()


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, k: int = 1, *, mean: torch.Tensor | None = None,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys most cosine-similar to each query after subtracting ``mean`` from both (None: no centring).

    Returns (similarities (Q, k) fp32, key rows (Q, k) long), best first. Memory stays at a (``chunk``,
    KEY_CHUNK) block whatever Q and M are (a 65k × 65k SAE fits). A key that is zero after centring is
    never chosen.
    """
    if not 1 <= k <= len(keys):
        raise SelfieError(f"asked for {k} nearest neighbour(s) but the training set has {len(keys)} vector(s); "
                          f"choose 1 to {len(keys)}")
    if queries.shape[-1] != keys.shape[-1]:
        raise SelfieError(f"held-out vectors have dimension {queries.shape[-1]} but the training vectors have "
                          f"{keys.shape[-1]}; give vectors from the same model and layer")
    sims, rows = [], []
    for start in range(0, len(queries), chunk):
        s, i = _nearest_block(_unit(queries[start:start + chunk], mean), keys, k, mean)
        sims.append(s)
        rows.append(i)
    if not sims:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(sims), torch.cat(rows)


def _unit(x: torch.Tensor, mean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows centred and L2-normalised, whether each row was non-zero after centring)."""
    x = x.float() - mean if mean is not None else x.float()
    norm = x.norm(dim=-1, keepdim=True)  # (n, 1)
    return x / norm.clamp_min(1e-12), norm.squeeze(-1) > 0


def _nearest_block(query: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor, k: int,
                   mean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    q, _ = query  # (b, d) unit rows
    best_s = torch.full((len(q), k), -torch.inf)
    best_i = torch.zeros((len(q), k), dtype=torch.long)
    for start in range(0, len(keys), KEY_CHUNK):
        kb, alive = _unit(keys[start:start + KEY_CHUNK], mean)  # (c, d), (c,)
        s = (q @ kb.T).masked_fill(~alive, -torch.inf)  # (b, c) cosines
        idx = torch.arange(start, start + len(kb)).expand(len(q), -1)
        best_s, pick = torch.cat([best_s, s], 1).topk(k, dim=1)  # (b, k): merge with the best so far
        best_i = torch.cat([best_i, idx], 1).gather(1, pick)
    return best_s, best_i


@dataclass(frozen=True)
class NearestRun:
    """One `selfie baseline nearest`: the training data (the trainer's syntax) and the held-out vectors.
    ``heldout`` None: the labels file's val split; else a vector source (``features``: its rows)."""

    labels_file: str | os.PathLike
    labels_vectors: str | None = None  # data.vectors_file: for a labels file that names no vectors file
    heldout: VectorSource | None = None
    features: Sequence[int] | None = None
    neighbours: int = 1
    centre: bool = True
    strip_labels: bool = False
    batch_size: int = 1024  # held-out vectors per chunk (one append to OUT per chunk)

    def inputs(self, train: TrainingSet, heldout: tuple[torch.Tensor, list[int]]) -> dict:
        """What the rows depend on, recorded beside OUT: the training set and held-out vectors by content."""
        src = self.heldout
        return {"baseline": BASELINE, "training_set": train.fingerprint(), "training_vectors": len(train.rows),
                "centring": "training mean" if self.centre else None, "neighbours": self.neighbours,
                "heldout": "val split" if src is None else str(src) if src.is_sae else FileInput(src.path),
                "heldout_key": src.key if src is not None and not src.is_sae else None,
                "heldout_vectors": _tensor_sha(*heldout)}


def read_training_set(run: NearestRun) -> tuple[TrainingSet, tuple[torch.Tensor, list[int]] | None]:
    """(the training set, the val split's (vectors, rows) or None when the file has no val entries)."""
    cfg = DataConfig(labels_file=str(run.labels_file), vectors_file=run.labels_vectors,
                     strip_labels=run.strip_labels)
    vectors, _, raw = read_examples(cfg)
    if vectors.dim() != 2:
        raise SelfieError(f"the labels file's vectors have shape {tuple(vectors.shape)}; expected (N, d)")
    by_split: dict[str, dict[int, list[str]]] = {"train": {}, "val": {}}
    asks = raw.prompts if raw.questions else [0] * len(raw.rows)
    for row, label, split, ask in zip(raw.rows, raw.labels, raw.splits, asks):
        if ask:  # a question's answer is not a label of the vector
            continue
        labels = by_split[split].setdefault(row, [])
        if label not in labels:
            labels.append(label)
    rows = list(by_split["train"])
    train = TrainingSet(vectors[rows].float().contiguous(), rows, [by_split["train"][r] for r in rows])
    val_rows = sorted(by_split["val"])
    return train, ((vectors[val_rows].float(), val_rows) if val_rows else None)


def nearest_labels(run: NearestRun, out: str | os.PathLike, *, overwrite: bool = False,
                   progress: Progress | None = None) -> Path:
    """Write the baseline's rows for ``run``'s held-out vectors into ``out`` (JSONL, resumable and owned like
    describe's output: a rerun with the same inputs adds only what is missing, other inputs are refused)."""
    train, val = read_training_set(run)
    if run.heldout is None:
        if val is None:
            raise SelfieError(f"{Path(run.labels_file).name} has no 'val' entries to hold out; mark some "
                              "entries \"split\": \"val\" or give held-out vectors with --vectors")
        queries, named = val
    else:
        queries, named = run.heldout.load(run.features)
    queries, indices = drop_zero_rows(queries, named, run.heldout.row_name if run.heldout else "vector")
    nearest_neighbours(queries[:0], train.vectors, run.neighbours)  # k and dimension, before OUT is touched
    mean = train.mean() if run.centre else None
    live = count_nonzero(train.vectors, mean)
    if live < run.neighbours:
        raise SelfieError(f"only {live} training vector(s) differ from the training mean, fewer than the "
                          f"{run.neighbours} neighbour(s) asked for; use --no-centre, fewer --neighbours or more "
                          "training vectors")
    with JsonlLog(out, run.inputs(train, (queries, indices)), command=COMMAND, key_fields=KEY_FIELDS,
                  overwrite=overwrite) as log:
        write_skipped(out, named, indices, run.heldout.row_name if run.heldout else "vector")
        done = {(r["index"], float(r["scale"]), r["sample"]) for r in log.rows}
        todo = _unfinished(indices, log.rows)
        tick = progress(len(indices), len(indices) - len(todo)) if progress is not None else None
        for start in range(0, len(todo), run.batch_size):
            chunk = todo[start:start + run.batch_size]
            sims, nbrs = nearest_neighbours(queries[chunk], train.vectors, run.neighbours, mean=mean)
            rows = [r for i, s, n in zip(chunk, sims.tolist(), nbrs.tolist())
                    for r in neighbour_rows(indices[i], s, n, train)]
            log.append([r for r in rows if (r["index"], r["scale"], r["sample"]) not in done])
            if tick is not None:
                tick(len(chunk))
    return Path(out)


def count_nonzero(vectors: torch.Tensor, mean: torch.Tensor | None) -> int:
    """How many rows are non-zero after subtracting ``mean`` (chunked: no copy of the whole table)."""
    return sum(int(_unit(vectors[s:s + KEY_CHUNK], mean)[1].sum()) for s in range(0, len(vectors), KEY_CHUNK))


def _unfinished(indices: Sequence[int], rows: Sequence[dict]) -> list[int]:
    """Positions in ``indices`` still to do: those without rows, and the last one written (a kill may have
    cut its rows short; its written rows are skipped by key)."""
    seen = {r["index"] for r in rows}
    last = rows[-1]["index"] if rows else None
    return [p for p, i in enumerate(indices) if i not in seen or i == last]


def neighbour_rows(index: int, sims: Sequence[float], neighbours: Sequence[int], train: TrainingSet) -> list[dict]:
    """Describe-style rows for one held-out vector: every label of each neighbour, nearest first."""
    out: list[dict] = []
    for rank, (sim, n) in enumerate(zip(sims, neighbours)):
        for label in train.labels[n]:
            out.append({"index": index, "scale": NO_SCALE, "sample": len(out), "label": label, "text": label,
                        "closed": True, "neighbour": train.rows[n], "rank": rank, "similarity": round(sim, 6)})
    return out


def _tensor_sha(vectors: torch.Tensor, indices: Sequence[int]) -> str:
    h = hashlib.sha256(json.dumps([list(vectors.shape), list(indices)]).encode())
    h.update(vectors.float().contiguous().numpy())
    return h.hexdigest()


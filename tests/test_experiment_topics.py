"""`selfie experiment topics` end to end on a tiny random Llama (offline, seconds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from selfie_adapters.cli import main
from selfie_adapters.errors import SelfieError
from selfie_adapters.experiments.topics import TopicsConfig, choose_topics, load_topic_titles

TITLES = ["Paris", "Chess", "Tokyo", "Penicillin", "Mount Everest", "The Beatles", "Photosynthesis", "Jazz",
          "Volcano", "Rome", "Tiger", "Opera"]


def test_packaged_topics_and_the_split_by_topic():
    titles = load_topic_titles(None)
    assert len(titles) == 3000 and len(set(titles)) == 3000
    topics, train, held = choose_topics(titles + titles[:5], TopicsConfig(num_topics=100, heldout=20, seed=1))
    assert len(topics) == 100 == len(set(topics)) and (len(train), len(held)) == (80, 20)
    assert not set(train) & set(held)
    assert choose_topics(titles, TopicsConfig(num_topics=100, heldout=20, seed=1))[0] == topics  # seeded
    with pytest.raises(SelfieError, match="more topics than --heldout"):
        choose_topics(titles[:10], TopicsConfig(num_topics=0, heldout=10))


def test_experiment_runs_reports_and_resumes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    topics = tmp_path / "topics.txt"
    topics.write_text("\n".join(TITLES))
    out = tmp_path / "run"
    args = ["experiment", "topics", "--model", str(tiny_model_dir), "--topics", str(topics), "--num-topics", "0",
            "--heldout", "4", "--layers", "1", "2", "--kind", "scalar_affine", "--steps", "3", "--batch-size", "4",
            "--max-new-tokens", "3", "--autocast", "bfloat16", "--out", str(out)]
    assert main([*args, "--no-score"]) == 0  # describe only (e.g. on a GPU box without the eval extra) ...
    assert json.loads((out / "report.json").read_text())["layers"]["1"]["scalar_affine"]["mrr"] is None
    assert not (out / "report.md").exists()
    # the described run, copied elsewhere without its tensors, scores from its files alone (no model)
    elsewhere = tmp_path / "copied"
    shutil.copytree(out, elsewhere, ignore=shutil.ignore_patterns("*.safetensors"))
    topics.rename(tmp_path / "moved.txt")  # nor the topics file: the report carries the held-out titles
    with monkeypatch.context() as m:
        m.setattr("selfie_adapters.experiments.topics.load_model", _no_model)
        assert main(["experiment", "topics", "--score-only", "--out", str(elsewhere)]) == 0
    assert (elsewhere / "topics.png").is_file() and "| layer | method |" in (elsewhere / "report.md").read_text()
    (tmp_path / "moved.txt").rename(topics)
    assert main(args) == 0  # ... then score the same run: nothing is trained or described again
    report = json.loads((out / "report.json").read_text())
    scored_elsewhere = json.loads((elsewhere / "report.json").read_text())
    for layer, result in report["layers"].items():
        for method in ("untrained", "scalar_affine"):
            for metric in ("scale", "recall@1", "recall@10", "mrr", "n"):
                assert scored_elsewhere["layers"][layer][method][metric] == result[method][metric]
        assert scored_elsewhere["layers"][layer]["examples"] == result["examples"]
    assert set(report["layers"]) == {"1", "2"} and report["heldout_topics"] == 4
    for result in report["layers"].values():
        assert set(result) == {"untrained", "scalar_affine", "examples"}
        assert 0.0 <= result["scalar_affine"]["recall@10"] <= 1.0 and result["scalar_affine"]["n"] == 4
        assert result["untrained"]["n"] == 4  # best of its scales, 4 labels each
        assert {e["title"] for e in result["examples"]} <= set(TITLES)
    assert (out / "topics.png").stat().st_size > 0 and "| layer | method |" in (out / "report.md").read_text()
    assert "held-out topic retrieval" in capsys.readouterr().out
    (final,) = (out / "layer-1" / "runs").glob("scalar_affine-*/final.safetensors")
    stamp = final.stat().st_mtime
    assert main(args) == 0  # resumes: nothing is retrained
    assert final.stat().st_mtime == stamp


def test_topics_from_json_lists_and_the_vital_articles_file(tmp_path):
    import gzip

    (tmp_path / "a.json").write_text(json.dumps(["Paris", "Jazz"]))
    with gzip.open(tmp_path / "b.json.gz", "wt", encoding="utf-8") as f:
        json.dump({"titles": ["Tiger", "Opera"]}, f)
    assert load_topic_titles(str(tmp_path / "a.json")) == ["Paris", "Jazz"]
    assert load_topic_titles(str(tmp_path / "b.json.gz")) == ["Tiger", "Opera"]
    (tmp_path / "c.json").write_text(json.dumps({"titles": [1, 2]}))
    with pytest.raises(SelfieError, match="list of title strings"):
        load_topic_titles(str(tmp_path / "c.json"))
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikipedia-vital-articles-level5.json.gz"
    if shared.is_file():  # the development data beside the checkout (not in CI's clone)
        assert len(load_topic_titles(str(shared))) == 50006


def _no_model(*args, **kwargs):
    raise AssertionError("--score-only must not load a model")


def test_score_only_needs_a_described_run(tmp_path, capsys):
    assert main(["experiment", "topics", "--score-only", "--out", str(tmp_path / "nothing")]) == 2
    assert "describe first" in capsys.readouterr().err
    for report in ("{not json", '{"x": 1}', '{"config": {"nope": 1}, "layers": {}}'):
        (tmp_path / "report.json").write_text(report)
        assert main(["experiment", "topics", "--score-only", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "is not a report of selfie experiment topics" in err and "Traceback" not in err
    (tmp_path / "report.json").write_text(json.dumps({"config": {}, "layers": {"18": {"untrained": {}}}}))
    assert main(["experiment", "topics", "--score-only", "--out", str(tmp_path)]) == 2
    assert "names no description file for layer 18 untrained" in capsys.readouterr().err


def test_bad_kind_and_layer_are_one_line_errors(tiny_model_dir, tmp_path, capsys):
    assert main(["experiment", "topics", "--model", str(tiny_model_dir), "--kind", "nope"]) == 2
    assert "unknown adapter kind" in capsys.readouterr().err
    assert main(["experiment", "topics", "--model", str(tiny_model_dir), "--layers", "9",
                 "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["experiment", "topics", "--model", str(tiny_model_dir), "--autocast", "bf16"]) == 2
    assert "--autocast 'bf16' is not one of: bfloat16, float16" in capsys.readouterr().err

"""`selfie eval ...` in-process through main(argv)."""

from __future__ import annotations

import json

from selfie_adapters.cli import main
from selfie_adapters.testing import write_local_sae


def test_eval_retrieval_json_and_errors(tmp_path, capsys):
    topics = tmp_path / "topics.jsonl"
    topics.write_text("\n".join(json.dumps({"id": t, "title": t}) for t in ["Apple", "Paris", "Violin"]))
    labels = tmp_path / "labels.jsonl"  # rows as `selfie describe` writes them
    labels.write_text("\n".join(json.dumps({"index": i, "scale": 1.0, "sample": 0, "label": lab, "text": lab,
                                            "logprob": -1.0}) for i, lab in
                                enumerate(["a red fruit", "the capital of France", "a string instrument"])))
    out = tmp_path / "r.json"
    rc = main(["eval", "retrieval", "--labels", str(labels), "--topics", str(topics), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert rc == 0 and printed["recall@1"] == 1.0 and printed["mrr"] == 1.0 and "recall@10" in printed
    assert json.loads(out.read_text())["n_labels"] == 3
    assert main(["eval", "retrieval", "--labels", str(labels), "--topics", str(topics), "--strategy", "x"]) == 2
    assert "unknown --strategy 'x'" in capsys.readouterr().err


def test_eval_generation_local_sae(tiny_model_dir, tmp_path, capsys):
    sae_file = write_local_sae(tmp_path / "sae.safetensors", d=64, latents=32, layer=1)
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"latent": 3, "label": "fruit"}\n{"latent": 5, "label": "music"}\n')
    out = tmp_path / "gen.jsonl"
    args = ["eval", "generation", "--model", str(tiny_model_dir), "--sae-file", str(sae_file), "--labels",
            str(labels), "--out", str(out), "--samples", "2", "--max-new-tokens", "4", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_trials"] == 4 and summary["n_latents"] == 2
    assert (tmp_path / "gen.report.json").exists() and len(out.read_text().splitlines()) == 4
    assert main(args) == 0 and len(out.read_text().splitlines()) == 4  # resumed: nothing new
    assert main(["eval", "generation", "--model", str(tiny_model_dir), "--labels", str(labels), "--out", str(out)]) == 2
    assert "which SAE?" in capsys.readouterr().err

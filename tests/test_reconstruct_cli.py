"""The reverse direction through the CLI: train-reconstructor, inspect, describe --reconstructor/--best-of
(scores streamed, resumable, recorded; exports carry the chosen label), score (ours, Neuronpedia, delphi),
and bad input (one `error:` line, exit 2, nothing lost)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters import Adapter, build_projection
from selfie_adapters.cli import main
from selfie_adapters.reconstruct import ReaderPrompt, Reconstructor

NAMES = ["Paris", "Rome", "Lima", "Oslo", "Cairo", "Quito", "Bern", "Kyiv"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("rec-cli")
    torch.manual_seed(0)
    save_file({"v": torch.randn(len(NAMES), 64)}, str(d / "vecs.safetensors"))
    entries = [{"index": i, "labels": [n], "split": "val" if i % 4 == 3 else "train"} for i, n in enumerate(NAMES)]
    section = {"metadata": {"dataset_name": "cities", "filename": "vecs.safetensors#v", "layer": 1}, "vectors": entries}
    (d / "labels.json").write_text(json.dumps([section]))
    (d / "config.yaml").write_text(
        f"model: {{name: {tiny_model_dir}, dtype: float32}}\n"
        "data: {labels_file: labels.json, batch_size: 4}\n"
        f"training: {{max_steps: 6, checkpoint_dir: {d / 'runs'}, validation_every_n_steps: 3}}\n"
        "logging: {use_wandb: false}\n")
    Adapter(build_projection("scalar_affine", 64, init_scale=4.0), {"model_name": str(tiny_model_dir)}).save(
        d / "ad.safetensors")
    Reconstructor(build_projection("full_rank", 8, init_scale=1.0), ReaderPrompt(layer=1), torch.zeros(8), 1.0,
                  {"model_name": "x"}).save(d / "rec8.safetensors")
    (d / "prompts.txt").write_text("\n".join(f"Tell me about {n}." for n in NAMES[:3]) + "\n")
    return d


@pytest.fixture(scope="module")
def trained(files):
    code = main(["train-reconstructor", str(files / "config.yaml")])
    assert code == 0
    return next((files / "runs").glob("*/final.safetensors"))


def test_train_reconstructor_and_inspect(files, trained, capsys):
    code, out, _ = run(capsys, "inspect", trained, "--json")
    info = json.loads(out)
    assert code == 0 and info["artifact"] == "reconstructor" and info["layer"] == 1
    assert info["projection_type"] == "full_rank" and info["model_dim"] == 64 and info["global_step"] == "6"
    code, _, err = run(capsys, "train-reconstructor", files / "config.yaml")
    assert code == 2 and err.startswith("error:") and "--resume" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "train-reconstructor", files / "config.yaml", "--resume", "--set",
                       "training.max_steps=8")
    assert code == 0 and "final:" in out


def describe(files, model_dir, out, *extra):
    return ("describe", "--model", model_dir, "--adapter", files / "ad.safetensors", "--vectors",
            files / "vecs.safetensors", "--features", "0-3", "--max-new-tokens", 4, "--batch-size", 3,
            "--out", out, *extra)


def test_describe_scores_every_row_and_marks_the_best(files, trained, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    args = describe(files, tiny_model_dir, out, "--reconstructor", trained, "--best-of", 3, "--temperature", 1,
                    "--export", f"neuronpedia:{tmp_path / 'np.json'}", "--export", f"delphi:{tmp_path / 'dl'}")
    code, _, shown = run(capsys, *args)
    assert code == 0 and "scores/s" in shown and "chosen labels: cos" in shown
    got = rows(out)
    assert len(got) == 12 and all(set(r["score"]) == {"cos", "centred_cos", "mse_nrm", "fve_nrm"} for r in got)
    for i in range(4):
        mine = [r for r in got if r["index"] == i]
        best = [r for r in mine if r["best"]]
        assert len(best) == 1 and best[0]["score"]["mse_nrm"] == min(r["score"]["mse_nrm"] for r in mine)
    settings = json.loads((tmp_path / "d.jsonl.settings.json").read_text())
    assert "reconstructor" in json.dumps(settings) and '"best_of": 3' in json.dumps(settings)
    np_rows = json.loads((tmp_path / "np.json").read_text())
    assert len(np_rows) == 4 and all("score" in r for r in np_rows)
    assert {r["description"] for r in np_rows} == {r["label"].strip() for r in got if r["best"]}
    assert len(list((tmp_path / "dl").glob("*.score.json"))) == 4
    before = out.read_text()
    assert run(capsys, *args)[0] == 0 and out.read_text() == before  # a rerun resumes: nothing to do
    code, _, err = run(capsys, *describe(files, tiny_model_dir, out, "--samples", 3, "--temperature", 1))  # no scores
    assert code == 2 and "other inputs" in err and out.read_text() == before


def test_scale_choice_per_vector_with_best_of_one(files, trained, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    code, _, _ = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", files / "vecs.safetensors",
                     "--features", "0-1", "--scale", 1, 3, "--max-new-tokens", 3, "--reconstructor", trained,
                     "--best-of", 1, "--out", out)
    got = rows(out)
    assert code == 0 and len(got) == 4 and sum(r["best"] for r in got) == 2


def test_roundtrip_reconstructor_in_describe(files, tiny_model_dir, tmp_path, capsys):
    mean = tmp_path / "mean.safetensors"
    assert run(capsys, "mean", "--model", tiny_model_dir, "--layer", 1, "--prompts", files / "prompts.txt",
               "--out", mean)[0] == 0
    out = tmp_path / "rt.jsonl"
    code, _, err = run(capsys, "describe", "--model", tiny_model_dir, "--prompts", files / "prompts.txt",
                       "--layer", 1, "--mean-vectors", mean, "--scale", 2, "--max-new-tokens", 3,
                       "--reconstructor", "roundtrip", "--out", out)
    assert code == 0, err
    assert all(-1 <= r["score"]["cos"] <= 1 for r in rows(out))


def test_score_reads_ours_neuronpedia_and_delphi(files, trained, tiny_model_dir, tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"index": i, "label": n, "scale": 1.0, "sample": 0}) + "\n"
                              for i, n in enumerate(NAMES)) + json.dumps({"index": 0, "label": "Rome"}) + "\n")
    npf = tmp_path / "np.json"
    npf.write_text(json.dumps([{"index": str(i), "description": n} for i, n in enumerate(NAMES)]))
    dl = tmp_path / "dl"
    dl.mkdir()
    for i, n in enumerate(NAMES):
        (dl / f"layers.1_latent{i}.txt").write_text(json.dumps(n))
    got = {}
    for name, src in (("ours", labels), ("np", npf), ("delphi", dl)):
        out = tmp_path / f"{name}.jsonl"
        code, _, err = run(capsys, "score", "--model", tiny_model_dir, "--labels", src, "--vectors",
                                f"{files / 'vecs.safetensors'}#v", "--reconstructor", trained, "--out", out)
        assert code == 0, err
        got[name] = rows(out)
        assert "best per vector: cos" in err
    assert len(got["ours"]) == 9 and sum(r["best"] for r in got["ours"] if r["index"] == 0) == 1
    by = {name: {r["index"]: r["score"]["cos"] for r in rs if r["label"] == NAMES[r["index"]]}
          for name, rs in got.items()}
    assert by["ours"] == pytest.approx(by["np"]) and by["np"] == pytest.approx(by["delphi"])


def test_bad_input_one_line_exit_2_nothing_lost(files, trained, tiny_model_dir, tmp_path, capsys):
    def refused(*args, match):
        code, _, err = run(capsys, *args)
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
        assert match in err, err

    out = tmp_path / "x.jsonl"
    refused(*describe(files, tiny_model_dir, out, "--reconstructor", files / "rec8.safetensors"),
            match="reconstructor expects d=8 but the model's hidden size is 64")
    refused(*describe(files, tiny_model_dir, out, "--reconstructor", files / "ad.safetensors"),
            match="not a reconstructor")
    refused(*describe(files, tiny_model_dir, out, "--reconstructor", trained, "--best-of", 0),
            match="--best-of must be >= 1")
    refused(*describe(files, tiny_model_dir, out, "--reconstructor", trained, "--best-of", 4),
            match="needs --temperature > 0")
    refused(*describe(files, tiny_model_dir, out, "--best-of", 2, "--temperature", 1), match="pass --reconstructor")
    refused(*describe(files, tiny_model_dir, out, "--reconstructor", "roundtrip"), match="needs --mean-vectors")
    assert not out.exists()
    labels = tmp_path / "far.jsonl"
    labels.write_text(json.dumps({"index": 99, "label": "x"}) + "\n")
    score_out = tmp_path / "scores.jsonl"
    refused("score", "--model", tiny_model_dir, "--labels", labels, "--vectors", files / "vecs.safetensors",
            "--reconstructor", trained, "--out", score_out, match="label index(es) [99] are not rows of the vectors")
    assert not score_out.exists()
    refused("inspect", tmp_path / "missing.safetensors", match="not found")


def test_score_roundtrip_is_exact_on_a_catalogue_model(tmp_path, capsys):
    names = ["Zapees", "Brou", "Trail", "Gloom"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"Tell me about {n}.\n" for n in names))
    assert run(capsys, "extract", "--model", "toy", "--layer", 1, "--prompts", prompts, "--out",
               tmp_path / "s.safetensors")[0] == 0
    assert run(capsys, "mean", "--model", "toy", "--layer", 1, "--prompts", prompts, "--out",
               tmp_path / "m.safetensors")[0] == 0
    labels = tmp_path / "l.jsonl"
    labels.write_text("".join(json.dumps({"index": i, "label": n}) + "\n" for i, n in enumerate(names)))
    out = tmp_path / "scores.jsonl"
    code, _, err = run(capsys, "score", "--model", "toy", "--labels", labels, "--vectors",
                       f"{tmp_path / 's.safetensors'}#layer_1", "--reconstructor", "roundtrip", "--mean-vectors",
                       tmp_path / "m.safetensors", "--out", out)
    assert code == 0, err
    assert all(r["score"]["cos"] == pytest.approx(1.0, abs=1e-4) for r in rows(out))  # the exact round trip

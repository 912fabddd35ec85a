"""Labels to and from Neuronpedia explanation exports and delphi explanation folders."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from selfie_adapters.cli import main
from selfie_adapters.errors import SelfieError
from selfie_adapters.labels.formats import best_labels, neuronpedia_rows, read_neuronpedia, write_neuronpedia

DESCRIBED = [  # rows as `selfie describe` writes them
    {"index": 3, "scale": 1.0, "sample": 0, "label": 'Use of "takes place"', "logprob": -0.4, "closed": True},
    {"index": 3, "scale": 1.0, "sample": 1, "label": "events", "logprob": -0.2, "closed": True},
    {"index": 3, "scale": 1.0, "sample": 2, "label": "runaway text", "logprob": -0.1, "closed": False},
    {"index": 7, "scale": 1.0, "sample": 0, "label": "fruit", "logprob": -1.0, "closed": True},
    {"index": 8, "scale": 1.0, "sample": 0, "label": "  ", "logprob": -1.0, "closed": True},
]


def test_neuronpedia_rows_round_trip(tmp_path):
    rows = neuronpedia_rows(DESCRIBED, model_id="llama3.1-8b-it", source="19-resid-post-gf",
                            explanation_model="goodfire-sae-scalar-affine")
    assert rows[0] == {"modelId": "llama3.1-8b-it", "layer": "19-resid-post-gf", "index": "3",
                       "description": 'Use of "takes place"', "typeName": "selfie",
                       "explanationModelName": "goodfire-sae-scalar-affine", "scale": 1.0, "sample": 0,
                       "logprob": -0.4}
    assert [(r["index"], r["description"]) for r in rows] == [("3", 'Use of "takes place"'), ("3", "events"),
                                                                ("3", "runaway text"), ("7", "fruit")]
    for name in ("np.json", "np.jsonl", "np.jsonl.gz"):
        back = read_neuronpedia(write_neuronpedia(rows, tmp_path / name))
        assert [(r["index"], r["description"]) for r in back] == [(int(r["index"]), r["description"]) for r in rows]
    assert json.loads(gzip.decompress((tmp_path / "np.jsonl.gz").read_bytes()).splitlines()[0])["index"] == "3"
    with pytest.raises(SelfieError, match="no labels"):
        neuronpedia_rows([DESCRIBED[-1]], model_id="m", source="s")


def test_delphi_folder_as_delphi_reads_it(tmp_path, capsys):
    src = tmp_path / "labels.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in DESCRIBED))
    assert best_labels(DESCRIBED) == {3: "events", 7: "fruit"}  # closed first, then the highest log-prob
    assert main(["labels", "export", str(src), "--format", "delphi", "--module", "layers.19",
                 "--out", str(tmp_path / "explanations")]) == 0
    files = sorted(p.name for p in (tmp_path / "explanations").iterdir())
    assert files == ["layers.19_latent3.txt", "layers.19_latent7.txt"]
    # delphi's explanation_loader: json.loads(open(f"{dir}/{latent}.txt").read())
    assert json.loads((tmp_path / "explanations" / "layers.19_latent3.txt").read_text()) == "events"
    assert main(["labels", "export", str(src), "--format", "neuronpedia", "--out", str(tmp_path / "np.json")]) == 0
    assert len(json.loads((tmp_path / "np.json").read_text())) == 4
    assert main(["labels", "export", str(src), "--format", "csv", "--out", str(tmp_path / "x")]) == 2
    assert "neuronpedia or delphi" in capsys.readouterr().err


def _described(tmp_path, inputs: dict | None, about: dict | None = None):
    """DESCRIBED as `selfie describe` leaves it: the rows and (unless ``inputs`` is None) their record."""
    from selfie_adapters.runs.outputs import Record

    src = tmp_path / "labels.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in DESCRIBED))
    if inputs is not None:
        Record(src, "describe").write(inputs, about)
    return src


SMOLLM_INPUTS = {"model": {"hub_id": "smollm2-135m-instruct"}, "adapter": None, "key": "layer_18", "sae": None,
                 "layer": None}


def test_export_names_come_from_the_rows_settings_record(tmp_path, capsys):
    """Rows of SmolLM2 at layer 18 (untrained) are exported as such, not as Llama-3.1-8B layer 19."""
    src = _described(tmp_path, SMOLLM_INPUTS, {"model": "smollm2-135m-instruct", "adapter": None})
    assert main(["labels", "export", str(src), "--out", str(tmp_path / "np.json")]) == 0
    rows = json.loads((tmp_path / "np.json").read_text())
    assert {(r["modelId"], r["layer"], r["explanationModelName"]) for r in rows} == {
        ("smollm2-135m-instruct", "18-resid-post", "selfie-untrained")}
    assert main(["labels", "export", str(src), "--format", "delphi", "--out", str(tmp_path / "ex")]) == 0
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == ["layers.18_latent3.txt", "layers.18_latent7.txt"]
    assert "placeholder" not in capsys.readouterr().err  # nothing was invented


def test_export_names_of_the_published_setup(tmp_path):
    """Goodfire SAE latents on Llama-3.1-8B-Instruct with a published adapter: Neuronpedia's own names."""
    from selfie_adapters.labels.naming import export_settings

    inputs = {**SMOLLM_INPUTS, "model": {"hub_id": "meta-llama/Llama-3.1-8B-Instruct"}, "key": None,
              "adapter": {"sha256": "0"}, "sae": "goodfire-llama-3.1-8b-instruct/layer_19"}
    about = {"model": "meta-llama/Llama-3.1-8B-Instruct", "adapter": "repo/x/goodfire-sae-scalar-affine.safetensors"}
    settings = export_settings(_described(tmp_path, inputs, about))
    assert settings.values == {"model_id": "llama3.1-8b-it", "source": "19-resid-post-gf",
                               "explanation_model": "goodfire-sae-scalar-affine", "module": "layers.19"}
    assert settings.invented == {}


def test_export_says_which_fields_it_invented_and_flags_override(tmp_path, capsys):
    src = _described(tmp_path, None)  # rows without their settings record
    assert main(["labels", "export", str(src), "--out", str(tmp_path / "np.json")]) == 0
    err = capsys.readouterr().err
    for field, flag in (("model_id", "--model-id"), ("source", "--source"), ("explanation_model",
                                                                             "--explanation-model")):
        assert f"note: {field} " in err and flag in err, err
    assert "no settings record labels.jsonl.settings.json" in err
    rows = json.loads((tmp_path / "np.json").read_text())
    assert rows[0]["modelId"] == "unknown-model" and rows[0]["layer"] == "unknown-layer"
    assert main(["labels", "export", str(src), "--out", str(tmp_path / "np.json"), "--model-id", "gemma-2-2b",
                 "--source", "12-res-16k", "--explanation-model", "mine"]) == 0
    assert "placeholder" not in capsys.readouterr().err
    assert json.loads((tmp_path / "np.json").read_text())[0]["modelId"] == "gemma-2-2b"
    # a record that does not say the layer (a plain tensor file): only that is invented
    src = _described(tmp_path, {**SMOLLM_INPUTS, "key": None})
    assert main(["labels", "export", str(src), "--format", "delphi", "--out", str(tmp_path / "ex")]) == 0
    err = capsys.readouterr().err
    assert "note: module 'layers.unknown' is a placeholder (the settings record does not say)" in err
    assert "model_id" not in err


def test_neuronpedia_export_trains_as_labels(tmp_path, capsys):
    """A Neuronpedia export (its S3 shape: id, authorId, index as a string, ...) → training labels."""
    from selfie_adapters.testing import toy_tokenizer
    from selfie_adapters.training.config import DataConfig
    from selfie_adapters.training.data import load_training_data

    export = tmp_path / "explanations.jsonl.gz"
    lines = [{"id": f"e{i}", "modelId": "llama3.1-8b-it", "layer": "19-resid-post-gf", "index": str(i % 10),
              "authorId": "a", "description": f"label {i}", "typeName": "oai_token-act-pair",
              "explanationModelName": "gpt-4o-mini"} for i in range(20)]
    lines.append({"id": "x", "modelId": "llama3.1-8b-it", "layer": "19-resid-post-gf", "index": "4",
                  "description": ""})  # empty: skipped
    export.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    assert main(["labels", "import", str(export), "--layer", "19", "--out", str(tmp_path / "labels.json")]) == 0
    assert "10 latents, 20 labels" in capsys.readouterr().out
    sections = json.loads((tmp_path / "labels.json").read_text())
    assert sections[0]["metadata"]["layer"] == 19 and len(sections[0]["vectors"]) == 10
    assert sum(v["split"] == "val" for v in sections[0]["vectors"]) == 1  # int(10 · 0.1)
    torch.save(torch.randn(10, 32), tmp_path / "w_dec.pt")
    data = load_training_data(DataConfig(labels_file=str(tmp_path / "labels.json"),
                                         vectors_file=str(tmp_path / "w_dec.pt")), toy_tokenizer(), 32)
    assert len(data.train) + len(data.val) == 20 and len(data.val) == 2
    (tmp_path / "bad.json").write_text('[{"description": "x"}]')
    assert main(["labels", "import", str(tmp_path / "bad.json"), "--layer", "19", "--out", str(tmp_path / "o")]) == 2
    assert "needs 'index'" in capsys.readouterr().err

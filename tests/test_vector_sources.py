"""One vector-source syntax (FILE, FILE#KEY, sae-lens:RELEASE/ID) for describe, training data, eval loss
and eval generation; the old spellings (--key, --sae-release/--sae-id, --sae-file) still work."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters.cli import main
from selfie_adapters.errors import SelfieError
from selfie_adapters.testing import write_local_sae
from selfie_adapters.training.config import DataConfig
from selfie_adapters.training.data import load_training_data
from selfie_adapters.vectors.source import VectorSource


@pytest.fixture
def fake_sae_lens(monkeypatch):
    W = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))

    class FakeSAE:
        W_dec = W

        @classmethod
        def from_pretrained(cls, release, sae_id, device="cpu"):
            assert (release, sae_id) == ("rel", "layer_1")
            return cls()

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=FakeSAE))
    return W


def test_parse_round_trips_and_names_bad_specs(tmp_path):
    assert VectorSource.parse("v.safetensors#layer_2") == VectorSource(path="v.safetensors", key="layer_2")
    assert VectorSource.parse("v.pt", key="k") == VectorSource(path="v.pt", key="k")
    sae = VectorSource.parse("sae-lens:goodfire-llama-3.1-8b-instruct/layer_19")
    assert sae.is_sae and (sae.sae_release, sae.sae_id) == ("goodfire-llama-3.1-8b-instruct", "layer_19")
    assert VectorSource.sae("goodfire-llama-3.1-8b-instruct", "layer_19") == sae
    for spec in ("v.safetensors#layer_2", "sae-lens:r/layer_19", "v.npy"):
        assert str(VectorSource.parse(spec)) == spec
    odd = tmp_path / "a#b.pt"  # an existing file whose name has '#' is the file, not file + key
    odd.write_bytes(b"")
    assert VectorSource.parse(odd) == VectorSource(path=str(odd))
    with pytest.raises(SelfieError, match=r"an SAE source must be sae-lens:<release>/<sae_id>, got 'sae-lens:r/'"):
        VectorSource.parse("sae-lens:r/")
    with pytest.raises(SelfieError, match="names tensor 'a' but --key says 'b'"):
        VectorSource.parse("v.pt#a", key="b")


def test_load_rows_of_files_and_saes(tmp_path, fake_sae_lens):
    save_file({"a": torch.ones(3, 64), "b": torch.arange(4 * 64.0).view(4, 64)}, str(tmp_path / "v.safetensors"))
    rows, kept = VectorSource.parse(f"{tmp_path / 'v.safetensors'}#b").load([3, 1])
    assert kept == [3, 1] and rows[0, 0] == 3 * 64 and rows[1, 0] == 64
    with pytest.raises(SelfieError, match="row indices \\[7\\] out of range"):
        VectorSource.parse(f"{tmp_path / 'v.safetensors'}#b").load([7])
    W, kept = VectorSource.parse("sae-lens:rel/layer_1").load()
    torch.testing.assert_close(W, fake_sae_lens)
    assert kept == list(range(10))


def test_describe_new_and_old_spellings_agree(tiny_model_dir, tmp_path, capsys, fake_sae_lens):
    save_file({"a": torch.randn(2, 64), "b": torch.randn(3, 64)}, str(tmp_path / "v.safetensors"))
    common = ["describe", "--model", str(tiny_model_dir), "--scale", "2", "--max-new-tokens", "3"]

    def texts(name, *source):
        out = tmp_path / f"{name}.jsonl"
        assert main(common + [*source, "--out", str(out)]) == 0, capsys.readouterr().err
        return [(r["index"], r["text"]) for r in map(json.loads, out.read_text().splitlines())]

    f = str(tmp_path / "v.safetensors")
    assert texts("new", "--vectors", f"{f}#b") == texts("old", "--vectors", f, "--key", "b")
    sae_new = texts("sae_new", "--vectors", "sae-lens:rel/layer_1", "--features", "2,4")
    assert sae_new == texts("sae_old", "--sae-release", "rel", "--sae-id", "layer_1", "--features", "2,4")
    assert [i for i, _ in sae_new] == [2, 4]
    assert main(common + ["--vectors", "sae-lens:rel/layer_1", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "sae-lens:rel/layer_1 needs --features" in capsys.readouterr().err


def test_training_data_reads_the_same_syntax(tmp_path, fake_sae_lens):
    from selfie_adapters.testing import toy_tokenizer

    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"index": 1, "label": "a red fruit"}\n{"index": 9, "label": "a blue stone", "split": "val"}\n')
    data = load_training_data(DataConfig(labels_file=str(labels), vectors_file="sae-lens:rel/layer_1"),
                              toy_tokenizer(), 64)
    torch.testing.assert_close(data.vectors, fake_sae_lens)


def test_eval_generation_sae_option_equals_old_sae_file(tiny_model_dir, tmp_path, capsys):
    sae_file = write_local_sae(tmp_path / "sae.safetensors", d=64, latents=32, layer=1)
    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"latent": 3, "label": "fruit"}\n')
    common = ["eval", "generation", "--model", str(tiny_model_dir), "--labels", str(labels), "--samples", "2",
              "--max-new-tokens", "3", "--json"]
    assert main(common + ["--sae", str(sae_file), "--out", str(tmp_path / "a.jsonl")]) == 0
    assert main(common + ["--sae-file", str(sae_file), "--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [[json.loads(x)["text"] for x in (tmp_path / n).read_text().splitlines()] for n in ("a.jsonl", "b.jsonl")]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    capsys.readouterr()
    assert main(common + ["--sae", str(sae_file), "--sae-file", str(sae_file), "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "which SAE? give one of" in capsys.readouterr().err

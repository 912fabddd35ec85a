"""Small helpers that speak the Hugging Face model tree: loading, decoder blocks, cache, EOS ids."""

from __future__ import annotations

import inspect
import logging
from functools import lru_cache
from pathlib import Path

import torch

from .errors import SelfieError

log = logging.getLogger(__name__)
EXTRA_EOS_TOKENS = ("<|eot_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # names load_model accepts


def load_model(name_or_dir: str, *, dtype: str | torch.dtype = "auto", device: str | None = None,
               device_map: str | None = None):
    """(model, tokenizer) from a local folder or a hub id; eval mode, no gradients.

    >>> model, tok = load_model("meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", device="cuda")
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype not in DTYPES:
        raise SelfieError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    local = Path(name_or_dir).expanduser()
    if str(name_or_dir).startswith((".", "/", "~")) and not local.exists():
        raise SelfieError(f"model folder not found: {name_or_dir}")
    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_dir))
        model = AutoModelForCausalLM.from_pretrained(str(name_or_dir), dtype=dtype, device_map=device_map)
    except OSError as e:
        raise SelfieError(f"could not load model {name_or_dir!r}: {str(e).splitlines()[0]}") from None
    if device is not None and device_map is None:
        model.to(device)
    model.eval().requires_grad_(False)
    return model, tok


def decoder_layers(model) -> torch.nn.ModuleList:
    """The list of decoder blocks (``model.model.layers`` for Llama-style models)."""
    for path in ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise SelfieError(f"cannot find the decoder blocks of {type(model).__name__}; expected model.model.layers")


def base_model(model):
    """The transformer without the LM head (``model.model`` for Llama)."""
    return getattr(model, "model", model)


@lru_cache(maxsize=8)
def _takes_cache_kwarg(forward_cls: type) -> bool:
    return "cache" in inspect.signature(forward_cls.forward).parameters


def cache_kw(model, cache) -> dict:
    """``{"cache": c}`` on recent transformers 5.x, ``{"past_key_values": c}`` on earlier ones."""
    return {"cache" if _takes_cache_kwarg(type(model)) else "past_key_values": cache}


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """Every id that ends an assistant turn: tokenizer/generation-config EOS plus known end tokens."""
    ids: set[int] = set()
    for src in (getattr(tokenizer, "eos_token_id", None),
                getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in EXTRA_EOS_TOKENS if t in vocab)
    return ids


def pad_token_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device

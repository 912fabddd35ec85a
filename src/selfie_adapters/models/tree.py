"""Helpers that speak the Hugging Face module tree: decoder blocks, layer indices, padding, the KV cache kwarg."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..errors import SelfieError


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


def check_layers(model_or_blocks, layers: Iterable[int], what: str = "layer(s)", fix: str = "") -> list[int]:
    """``layers`` sorted and unique, each a block index of the model (or of ``n`` blocks, given an int).

    Layer L means the residual stream after block L (HF ``hidden_states[L + 1]``).
    """
    n = model_or_blocks if isinstance(model_or_blocks, int) else len(decoder_layers(model_or_blocks))
    layers = [int(L) for L in layers]
    bad = [L for L in layers if not 0 <= L < n]
    if bad or not layers:
        shown = bad if len(bad) != 1 or len(layers) != 1 else bad[0]
        raise SelfieError(f"{what} {shown if layers else '[]'} out of range; this model has blocks 0..{n - 1}"
                          + (f" {fix}" if fix else ""))
    return sorted(set(layers))


@dataclass(frozen=True)
class LeftPadded:
    """A left-padded batch of token id lists; ``offsets[b]`` is where row b's first real token sits."""

    ids: torch.Tensor  # (B, T) long, pad id on the left
    attention: torch.Tensor  # (B, T) long, 0 on padding
    positions: torch.Tensor  # (B, T) long, 0, 1, ... over each row's real tokens
    offsets: list[int]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None) -> LeftPadded:
    """Right-align token id lists in one (B, T) batch; position ids count real tokens only."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    offsets = [T - len(p) for p in prompts]
    for b, (p, off) in enumerate(zip(prompts, offsets)):
        ids[b, off:] = torch.tensor(list(p), dtype=torch.long)
        attention[b, off:] = 1
    positions = (attention.cumsum(-1) - 1).clamp_min(0)
    return LeftPadded(ids.to(device), attention.to(device), positions.to(device), offsets)


def base_model(model):
    """The transformer without the LM head (``model.model`` for Llama)."""
    return getattr(model, "model", model)


@lru_cache(maxsize=8)
def _takes_cache_kwarg(forward_cls: type) -> bool:
    return "cache" in inspect.signature(forward_cls.forward).parameters


def cache_kw(model, cache) -> dict:
    """``{"cache": c}`` on recent transformers 5.x, ``{"past_key_values": c}`` on earlier ones."""
    return {"cache" if _takes_cache_kwarg(type(model)) else "past_key_values": cache}


def embedding_norm(model) -> float:
    """Mean L2 norm of the input-embedding rows: the natural size of a soft token for this model
    (SmolLM2-135M: about 3.2). Computed in chunks so a 128k-row bf16 table never doubles in memory."""
    weight = model.get_input_embeddings().weight.detach()  # (V, d)
    total = sum(float(weight[i:i + 8192].float().norm(dim=-1).sum()) for i in range(0, len(weight), 8192))
    return total / len(weight)


def model_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def logits_width(model) -> int:
    """How many logits one row of one forward produces: the output head's rows (``config.vocab_size``
    when the model has no separate head module)."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)

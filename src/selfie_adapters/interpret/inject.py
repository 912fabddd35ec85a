"""Putting soft tokens into a forward pass.

Two ways, both speaking HF: replace input embeddings at the injection sites (what the adapters
were trained for), or overwrite the residual stream entering decoder block k at the sites during
the prompt pass (original SelfIE / Patchscopes); the KV cache carries the patch into generation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..models.tree import decoder_layers


def embed_with_soft_tokens(model, input_ids: torch.Tensor, site_mask: torch.Tensor,
                           soft: torch.Tensor) -> torch.Tensor:
    """Input embeddings with row b's soft token at every True of ``site_mask[b]``.

    input_ids, site_mask: (B, T); soft: (B, d) → (B, T, d) in the embedding dtype.
    """
    emb = model.get_input_embeddings()(input_ids)  # (B, T, d)
    soft = soft.to(device=emb.device, dtype=emb.dtype)[:, None, :]  # (B, 1, d)
    return torch.where(site_mask.to(emb.device)[..., None], soft, emb)


@contextmanager
def residual_overwrite(model, layer: int, site_mask: torch.Tensor, vectors: torch.Tensor) -> Iterator[None]:
    """Overwrite the hidden state entering block ``layer`` at the sites, on the next forward only.

    site_mask: (B, T) for the chunk that the next forward processes; vectors: (B, d).
    Later forwards (generation steps) are untouched: the cached keys/values carry the patch.
    ``layer`` is checked once, by the caller (``Interpreter(inject_layer=...)``).
    """
    blocks = decoder_layers(model)
    state = {"done": False}

    def pre_hook(module, args, kwargs):
        if state["done"]:
            return None
        state["done"] = True
        hidden = args[0] if args else kwargs["hidden_states"]  # (B, T, d)
        patched = torch.where(site_mask.to(hidden.device)[..., None],
                              vectors.to(hidden.device, hidden.dtype)[:, None, :], hidden)
        if args:
            return (patched, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": patched}

    handle = blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()

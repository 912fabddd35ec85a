"""Score answer choices without generating: the teacher-forced log-probability of each choice's tokens.

One prompt pass per batch (``generate.prefill``: the shared prefix once, soft tokens injected) gives
every choice's first token; only choices longer than one token need a second, small forward over
their remaining tokens from the same KV cache (each row's cache repeated once per choice).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from ..models.tree import cache_kw, left_pad, model_device
from .generate import prefill


@torch.inference_mode()
def choice_logprobs(model, prompt: list[int], sites: list[int], soft: torch.Tensor, choices: list[list[int]], *,
                    inject_layer: int | None = None, pad_id: int = 0) -> torch.Tensor:
    """log p(choice tokens | prompt with soft[b] at the sites), summed over each choice's tokens.

    prompt: ids; sites: injection positions; soft: (B, d); choices: C lists of ids → (B, C) fp32.
    """
    B, C = soft.shape[0], len(choices)
    batch = left_pad([prompt] * B, pad_id, model_device(model))  # equal prompts: no padding, no mask
    cache = DynamicCache(config=model.config)
    logits, _ = prefill(model, batch, [prompt] * B, [sites] * B, soft, cache, inject_layer=inject_layer)  # (B, V)
    first = torch.tensor([c[0] for c in choices], device=logits.device)
    total = logits.log_softmax(-1)[:, first]  # (B, C): each choice's first token
    rest = max(len(c) for c in choices) - 1
    if rest == 0:
        return total
    ids = torch.full((C, rest), pad_id, dtype=torch.long)  # (C, R): inputs, right-padded
    targets = torch.zeros(C, rest, dtype=torch.long)  # (C, R): the token each input predicts
    valid = torch.zeros(C, rest, dtype=torch.bool)
    for j, c in enumerate(choices):
        ids[j, :len(c) - 1], targets[j, :len(c) - 1], valid[j, :len(c) - 1] = (
            torch.tensor(c[:-1]), torch.tensor(c[1:]), True)
    cache.batch_repeat_interleave(C)  # row b·C + j: vector b, choice j
    device = batch.ids.device
    positions = (batch.positions[:, -1:] + 1 + torch.arange(rest, device=device)).repeat_interleave(C, 0)  # (BC, R)
    # right padding needs no mask: causal attention keeps every real position exact
    out = model(input_ids=ids.to(device).repeat(B, 1), position_ids=positions, use_cache=True,
                **cache_kw(model, cache))
    lp = out.logits.float().log_softmax(-1).gather(-1, targets.to(device).repeat(B, 1)[..., None])[..., 0]  # (BC, R)
    lp = torch.where(valid.to(device).repeat(B, 1), lp, 0.0).sum(-1).view(B, C)
    return total + lp

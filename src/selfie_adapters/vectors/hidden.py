"""Hidden states of prompts: the residual stream after chosen blocks, and streaming dataset means."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import SelfieError
from ..files import check_finite
from ..models.tokens import pad_token_id
from ..models.tree import base_model, check_layers, decoder_layers, left_pad, model_device
from .prompts import render_prompts


class _StopForward(Exception):
    """Raised by the hook on the deepest requested block: nothing above it runs."""


@torch.inference_mode()
def hidden_states_batch(model, batch: list[list[int]], layers: Sequence[int], pad_id: int) -> dict[int, torch.Tensor]:
    """Residual stream after each block in ``layers`` for left-padded ``batch``: {L: (B, T, d)}.

    Blocks above max(layers) and the LM head never run.
    """
    padded = left_pad(batch, pad_id, model_device(model))
    captured: dict[int, torch.Tensor] = {}
    blocks, last = decoder_layers(model), max(layers)

    def hook_for(layer: int):
        def hook(module, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == last:
                raise _StopForward
        return hook

    handles = [blocks[L].register_forward_hook(hook_for(L)) for L in layers]
    try:
        base_model(model)(input_ids=padded.ids, attention_mask=padded.attention, position_ids=padded.positions,
                          use_cache=False)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def extract_hidden_states(model, tokenizer, prompts: Sequence[str], layers: int | Sequence[int], *,
                          positions: int | Sequence[int] = -1, chat: bool = True, batch_size: int = 8,
                          progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """Residual stream after block L (= HF ``hidden_states[L + 1]``) at chosen token positions.

    Returns {L: (N, d)} fp32 for one position (default: the last token), or {L: (N, P, d)} for a
    list of positions (negative counts from the end of each prompt).

    >>> vecs = extract_hidden_states(model, tok, ["Tell me about Paris."], 19, chat=True)[19]
    """
    layers = check_layers(model, [layers] if isinstance(layers, int) else layers)
    single = isinstance(positions, int)
    pos = [positions] if single else list(positions)
    encoded = render_prompts(tokenizer, prompts, chat)
    for n, ids in enumerate(encoded):
        if any(not -len(ids) <= p < len(ids) for p in pos):
            raise SelfieError(f"prompt {n} has {len(ids)} tokens; positions {pos} do not fit it")
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths → little padding
    out = {L: torch.empty(len(encoded), len(pos), model.config.hidden_size) for L in layers}
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [encoded[i] for i in rows]
        states = hidden_states_batch(model, batch, layers, pad_token_id(tokenizer))
        T = max(len(s) for s in batch)
        for b, (i, seq) in enumerate(zip(rows, batch)):
            cols = [T - len(seq) + (p % len(seq)) for p in pos]
            for L in layers:
                out[L][i] = states[L][b, cols].float().cpu()
        if progress is not None:
            progress(len(rows))
    return {L: (v[:, 0] if single else v) for L, v in out.items()}


def sum_hidden_states(model, tokenizer, prompts: Sequence[str], layers: int | Sequence[int], *,
                      chat: bool = True, batch_size: int = 8,
                      progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """fp64 sums of the last-token state over prompts, streamed batch by batch: {L: (d,)}."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    sums: dict[int, torch.Tensor] = {}
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        for L, v in extract_hidden_states(model, tokenizer, chunk, layers, chat=chat, batch_size=batch_size).items():
            check_finite(v, f"layer {L} hidden states")
            sums[L] = sums.get(L, torch.zeros(v.shape[-1], dtype=torch.float64)) + v.double().sum(0)
        if progress is not None:
            progress(len(chunk))
    return sums


def mean_hidden_states(model, tokenizer, prompts: Sequence[str], layers: int | Sequence[int], *,
                       chat: bool = True, batch_size: int = 8,
                       progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """Streaming mean of the last-token state over prompts, several layers in one pass: {L: (d,)} fp32.

    Sums accumulate in fp64, so the mean does not depend on the model's dtype or the batch size.
    """
    if not prompts:
        raise SelfieError("no prompts given; the prompts file is empty")
    sums = sum_hidden_states(model, tokenizer, prompts, layers, chat=chat, batch_size=batch_size, progress=progress)
    return means_of(sums, len(prompts))


def means_of(sums: dict[int, torch.Tensor], count: int) -> dict[int, torch.Tensor]:
    """{L: fp64 sum} over ``count`` prompts → {L: (d,) fp32 mean}."""
    return {L: (s / count).float() for L, s in sums.items()}


def contrastive(states: torch.Tensor) -> torch.Tensor:
    """(N, d) states minus their mean over the set: the contrastive vectors of the topic experiments."""
    return states - states.mean(0)

"""The frozen subject model reading a label: the state after block k of a fixed prompt around it.

The prompt is ``Tell me about {label}.`` by default, rendered with the chat template + generation
prompt exactly as ``vectors/prompts.py`` renders the prompts vectors are extracted from, so the
zero-training round trip reads the very state the vector was taken from. The state is taken at
the last token (``last``) or averaged over the label's own tokens (``mean``). Blocks above k and the
LM head never run, and the prompt's shared prefix (the chat template's system block, ``Tell me
about``) runs once per batch; states are computed without gradients (the LM is frozen), so a trainer
can cache them once per label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..errors import SelfieError
from ..models.tokens import pad_token_id
from ..models.tree import base_model, cache_kw, check_layers, decoder_layers, model_device
from ..vectors.prompts import chat_text

DEFAULT_PROMPT = "Tell me about {label}."
POOLINGS = ("last", "mean")


@dataclass(frozen=True)
class ReaderPrompt:
    """How the model reads a label: ``prompt`` (with one ``{label}``), chat rendering, layer k, pooling."""

    layer: int
    prompt: str = DEFAULT_PROMPT
    chat: bool = True
    pooling: str = "last"

    def __post_init__(self) -> None:
        if self.prompt.count("{label}") != 1:
            raise SelfieError(f"the reconstructor prompt must contain '{{label}}' exactly once, got {self.prompt!r}")
        if self.pooling not in POOLINGS:
            raise SelfieError(f"pooling {self.pooling!r} is not one of: {', '.join(POOLINGS)}")

    def encode(self, tokenizer, label: str) -> tuple[list[int], list[int]]:
        """(token ids of the rendered prompt, positions to pool: the last token, or the label's tokens)."""
        before, after = self.prompt.split("{label}")
        question = before + label + after
        if self.chat:
            text = chat_text(tokenizer, question, fix="set reconstructor.chat: false (raw text with BOS)")
        else:
            text = (getattr(tokenizer, "bos_token", None) or "") + question
        if self.pooling == "last":
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return ids, [len(ids) - 1]
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        start = text.rfind(question) + len(before)
        end = start + len(label)
        pos = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end and e > start]
        return ids, pos or [len(ids) - 1]  # an empty label: the last token


class _Stop(Exception):
    """Raised after block k: nothing above it runs."""


def _run_to_block(model, layer: int, **inputs) -> torch.Tensor:
    """The residual stream after block ``layer`` of one base-model forward (the blocks above never run)."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        base_model(model)(use_cache=True, **inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


def shared_prefix(encoded: Sequence[tuple[list[int], list[int]]]) -> int:
    """Tokens every prompt starts with (the chat template's system block, ``Tell me about``), short of any
    pooled position, so the prefix runs once per batch and only the labels' own tokens per row."""
    first = encoded[0][0]
    n = min(min(len(ids) - 1, min(pos)) for ids, pos in encoded)
    for ids, _ in encoded:
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return max(n, 0)


@torch.inference_mode()
def read_states(model, tokenizer, labels: Sequence[str], reader: ReaderPrompt, *, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N, d) fp32 states of ``labels`` read through ``reader``: per batch, the shared prefix once (its KV
    cache copied to every row), then the rows' own tokens right-padded; blocks above k never run.

    >>> states = read_states(model, tok, ["Paris", "a red fish"], ReaderPrompt(layer=18))
    """
    check_layers(model, [reader.layer], "reconstructor layer")
    encoded = [reader.encode(tokenizer, label) for label in labels]
    out = torch.empty(len(labels), model.config.hidden_size)
    if not encoded:
        return out
    P = shared_prefix(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths → little padding
    pad, device = pad_token_id(tokenizer), model_device(model)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        tails = [encoded[i][0][P:] for i in rows]
        S = max(len(t) for t in tails)
        ids = torch.full((len(rows), S), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), P + S, dtype=torch.long)
        mask[:, :P] = 1
        for b, t in enumerate(tails):  # right padding: causal attention keeps every real token exact
            ids[b, :len(t)] = torch.tensor(t)
            mask[b, P:P + len(t)] = 1
        cache = DynamicCache(config=model.config)
        if P:
            _run_to_block(model, reader.layer, input_ids=torch.tensor([encoded[rows[0]][0][:P]], device=device),
                          **cache_kw(model, cache))
            cache.batch_repeat_interleave(len(rows))
        h = _run_to_block(model, reader.layer, input_ids=ids.to(device), attention_mask=mask.to(device),
                          position_ids=(P + torch.arange(S, device=device)).expand(len(rows), S),
                          **cache_kw(model, cache))  # (B, S, d)
        for b, i in enumerate(rows):
            out[i] = h[b, [p - P for p in encoded[i][1]]].float().mean(0).cpu()
        if progress is not None:
            progress(len(rows))
    return out

"""The frozen subject model reading a label: the state after block k of a fixed prompt around it.

The prompt is ``Tell me about {label}.`` by default, rendered with the chat template + generation
prompt exactly as ``vectors/prompts.py`` renders the prompts vectors are extracted from, so the
zero-training round trip reads the very state the vector was taken from. The state is taken at
the last token (``last``) or averaged over the label's own tokens (``mean``). Blocks above k and the
LM head never run; states are computed without gradients (the LM is frozen), so a trainer can
cache them once per label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import SelfieError
from ..models.tokens import pad_token_id
from ..models.tree import check_layers
from ..vectors.hidden import hidden_states_batch
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


@torch.inference_mode()
def read_states(model, tokenizer, labels: Sequence[str], reader: ReaderPrompt, *, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N, d) fp32 states of ``labels`` read through ``reader`` (one truncated forward per batch).

    >>> states = read_states(model, tok, ["Paris", "a red fish"], ReaderPrompt(layer=18))
    """
    check_layers(model, [reader.layer], "reconstructor layer")
    encoded = [reader.encode(tokenizer, label) for label in labels]
    out = torch.empty(len(labels), model.config.hidden_size)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths → little padding
    pad = pad_token_id(tokenizer)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = [encoded[i][0] for i in rows]
        states = hidden_states_batch(model, batch, [reader.layer], pad)[reader.layer]  # (B, T, d), left-padded
        T = states.shape[1]
        for b, i in enumerate(rows):
            ids, pos = encoded[i]
            cols = [T - len(ids) + p for p in pos]
            out[i] = states[b, cols].float().mean(0).cpu()
        if progress is not None:
            progress(len(rows))
    return out

"""What generation scoring writes and reads, without torch: the protocols (prompt, sampling, where
the latent is read), parsing a written conversation into chat turns, and the token masks that say
which rendered tokens count as content. ``generation.py`` runs them on a model; the CLI reads the
protocol table for its choices and help."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..models.tokens import special_token_ids
from ..vectors.prompts import render_chat

DEFAULT_PROMPT = ("Write a short conversation between a user and an assistant in which the following "
                  "clearly comes up: {label}. Write only the conversation.")
# The reference implementation's prompt and system message (behind the published 71% / 63%); "_" is the label.
REFERENCE_PROMPT = ("Produce a VERY SHORT conversation which exhibits '_'\n"
                    "Do not include any other text in your response. Start immediately with the conversation.")
REFERENCE_SYSTEM = ("You are a helpful AI assistant who generates EXTREMELY SHORT example conversations. "
                    "The conversations are between a user and an assistant, and have the following format:\n"
                    "[USER] I'm a user.\n[ASSISTANT] I'm the assistant.")



# A turn marker at the start of a line: "User:", "**Assistant:**", "> Human:", "AI:" ...
_TURN = re.compile(r"^[ \t>#*_-]*(user|human|assistant|ai)[ \t*_]*:[ \t*_]*", re.IGNORECASE | re.MULTILINE)
_ROLE = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}


def encode_chat(tokenizer, messages: list[dict], *, generation_prompt: bool) -> tuple[str, list[int]]:
    """The chat-rendered text of ``messages`` and its token ids (no special tokens added)."""
    text = render_chat(tokenizer, messages, generation_prompt=generation_prompt,
                       fix="generation scoring needs an instruct model's own tokenizer")
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])


def parse_conversation(text: str) -> list[dict]:
    """The chat messages of a written conversation.

    Lines starting with a turn marker ("User:", "Assistant:", "Human:", "AI:", also bold/quoted) open a
    turn; the marker itself becomes the template's role header. Text before the first marker ("Sure,
    here is a conversation:") is not part of the conversation. Without any marker the whole text is one
    user turn. Empty turns are dropped.

    >>> parse_conversation("User: hi\\n**Assistant:** hello")
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello'}]
    """
    marks = list(_TURN.finditer(text))
    if not marks:
        return [{"role": "user", "content": text.strip()}] if text.strip() else []
    ends = [m.start() for m in marks[1:]] + [len(text)]
    turns = [{"role": _ROLE[m.group(1).lower()], "content": text[m.end():e].strip()} for m, e in zip(marks, ends)]
    return [t for t in turns if t["content"]]


_TAG = re.compile(r"(\[(?:USER|ASSISTANT)\])")


def parse_tagged_conversation(text: str) -> list[dict]:
    """The reference protocol's parser: ``[USER]`` / ``[ASSISTANT]`` tags (on their own line or inline)
    open turns; untagged text before the first tag is a user turn; a turn's pieces are joined with
    spaces; text without any usable turn becomes one assistant message.

    >>> parse_tagged_conversation("[USER] hi [ASSISTANT] hello\nthere")
    [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'hello there'}]
    """
    turns: list[dict] = []
    role, parts = None, []

    def close():
        content = " ".join(parts).strip()
        if role is not None and content:
            turns.append({"role": "user" if role == "[USER]" else "assistant", "content": content})

    pieces = [p.strip() for line in text.split("\n") for p in _TAG.split(line)]
    for piece in filter(None, pieces):
        if _TAG.fullmatch(piece):
            close()
            role, parts = piece, []
        else:
            role = role or "[USER]"
            parts.append(piece)
    close()
    if not turns and text.strip():
        return [{"role": "assistant", "content": text}]
    return turns


def after_bos_mask(tokenizer, messages: list[dict], **_) -> tuple[list[int], list[bool]]:
    """The reference protocol's read positions: the rendered chat (system block and role headers
    included), every token after the first (BOS)."""
    _, ids = encode_chat(tokenizer, messages, generation_prompt=False)
    return ids, [i > 0 for i in range(len(ids))]


@dataclass(frozen=True)
class GenerationProtocol:
    """How conversations are written and where the latent is read (``default`` or ``reference``)."""

    name: str
    prompt: str
    placeholder: str  # replaced by the label in ``prompt``
    system: str | None
    samples: int
    max_new_tokens: int
    temperature: float
    top_p: float
    parse: Callable[[str], list[dict]]
    mask: Callable[..., tuple[list[int], list[bool]]]
    stop_at: str  # "eos_ids": every end-of-sequence id; "tokenizer_eos": tokenizer.eos_token_id only
    help: str = ""
    label_sampling: tuple[tuple[str, float], ...] = ()  # how --adapter writes labels (empty: ours, see below)

    def label_settings(self, label_samples: int) -> dict:
        """Sampling of labels written on the fly (``--adapter``): the protocol's, else greedy for one label."""
        return dict(self.label_sampling) or {"temperature": 0.0 if label_samples == 1 else 1.0}


def content_token_mask(tokenizer, messages: list[dict], *, roles: Sequence[str] = ("user", "assistant"),
                       model=None, special: set[int] | None = None) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered chat and a mask of its content tokens (the ``roles``' message text).

    Each message's text is located in the rendered template string and mapped to tokens through
    the tokenizer's offsets; special tokens, role headers, BOS and the system block (including a
    default one the template inserts) fall outside every counted span. ``special``: precomputed
    ``special_token_ids`` (it reads the whole vocabulary; pass it when masking many chats).
    """
    text, _ = encode_chat(tokenizer, messages, generation_prompt=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for m in messages:
        content = str(m["content"]).strip()
        at = text.find(content, cursor) if content else -1
        if at < 0:
            continue
        cursor = at + len(content)
        if m["role"] in roles:
            spans.append((at, cursor))
    special = special_token_ids(tokenizer, model) if special is None else special
    mask = [tid not in special and e > s and any(a <= s and e <= b for a, b in spans)
            for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), mask


GENERATION_PROTOCOLS = {
    "default": GenerationProtocol("default", DEFAULT_PROMPT, "{label}", None, 4, 64, 1.0, 0.95,
                                  parse_conversation, content_token_mask, "eos_ids",
                                  help="this project's (content tokens only)"),
    # the reference's label generator samples (T 0.7, top-p 0.9, 30 tokens)
    "reference": GenerationProtocol("reference", REFERENCE_PROMPT, "_", REFERENCE_SYSTEM, 10, 100, 0.7, 0.9,
                                    parse_tagged_conversation, after_bos_mask, "tokenizer_eos",
                                    help="the reference implementation's prompt, [USER]/[ASSISTANT] parsing, "
                                         "sampling and every token after BOS (its published numbers)",
                                    label_sampling=(("temperature", 0.7), ("top_p", 0.9), ("max_new_tokens", 30))),
}

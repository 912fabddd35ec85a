"""Prompts as the model sees them: prompt files, chat rendering, token ids and question-token positions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import SelfieError
from ..files import iter_jsonl

NO_CHAT_FIX = "pass --raw (chat=False) or use the model's own tokenizer"


def render_chat(tokenizer, messages: list[dict], *, generation_prompt: bool = True, fix: str = NO_CHAT_FIX) -> str:
    """``messages`` rendered by the tokenizer's chat template (+ the assistant header if ``generation_prompt``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise SelfieError(f"the tokenizer has no chat template; {fix}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def chat_text(tokenizer, question: str, fix: str = NO_CHAT_FIX) -> str:
    """One user turn rendered by the tokenizer's chat template, ending with the assistant header."""
    return render_chat(tokenizer, [{"role": "user", "content": question}], fix=fix)


def render_prompts(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[list[int]]:
    """Token ids per prompt; with ``chat`` through the tokenizer's chat template + generation prompt."""
    out = []
    for p in prompts:
        if chat:
            out.append(tokenizer(chat_text(tokenizer, p), add_special_tokens=False)["input_ids"])
        else:
            out.append(tokenizer(p)["input_ids"])
    if any(len(ids) == 0 for ids in out):
        raise SelfieError("a prompt tokenizes to nothing; remove empty prompts")
    return out


def load_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line (.txt) or JSONL rows with a "prompt" field (.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"prompts file not found: {path}")
    lines = [ln for ln in read_utf8(path, "prompts file").splitlines() if ln.strip()]
    if path.suffix == ".jsonl" or (lines and lines[0].lstrip().startswith("{")):
        hint = 'each line must be a JSON object with a "prompt" field holding a string'
        rows = list(iter_jsonl(lines, path.name, hint=hint))
        for n, row in rows:
            if not isinstance(row.get("prompt"), str):
                problem = "field is not a string" if "prompt" in row else "field"
                raise SelfieError(f"{path.name}:{n}: no \"prompt\" {problem}; {hint}")
        lines = [row["prompt"] for _, row in rows]
    if not lines:
        raise SelfieError(f"prompts file {path.name} is empty")
    return lines


def read_utf8(path: Path, what: str) -> str:
    """A text file's content; invalid UTF-8 is an error naming the file and the byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SelfieError(f"{what} {path.name} is not valid UTF-8 (byte {e.start}); re-save it as UTF-8") from None


def question_tokens(tokenizer, question: str, *, chat: bool = True, prefix: str = "",
                    to_end: bool = False) -> tuple[list[int], list[int], list[str]]:
    """(prompt ids, positions of the question's tokens — through the end of the prompt with ``to_end`` —,
    their strings) for the rendered prompt; ``prefix`` goes before the question in the user turn."""
    if chat:
        text = chat_text(tokenizer, prefix + question, fix="pass chat=False (CLI: --raw) to use the raw question")
    else:
        bos = getattr(tokenizer, "bos_token", None) or ""
        text = bos + prefix + question
    start = text.rfind(question.strip())
    if start < 0:
        raise SelfieError("the chat template changed the question text; pass chat=False (CLI: --raw)")
    end = start + len(question.strip())
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    pos = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end and e > start]
    if to_end and pos:
        pos = list(range(pos[0], len(ids)))
    return ids, pos, [tokenizer.decode([ids[i]]) for i in pos]

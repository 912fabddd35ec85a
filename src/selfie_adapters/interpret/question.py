"""Questions about a vector: the prompt with the soft token at every ``{vector}``, and answer choices as tokens.

A question is rendered the way the SelfIE prompt is (``template.user_turn``: Llama-3 in the published
format, other families by their own chat template), with the injection token the template resolver
chose in place of each ``{vector}``; an optional answer prefix (which may hold ``{vector}`` too) starts
the assistant's turn. Choices are the token ids that follow that prompt.

>>> q = question_template(tokenizer, "Is {vector} a place? Answer yes or no.", "<|reserved_special_token_0|>")
>>> choice_token_ids(tokenizer, q.text, ["yes", "no"])
[[9891], [2201]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ..errors import SelfieError
from .template import PromptTemplate, user_turn

VECTOR_FIELD = "{vector}"


class QuestionPrompt(NamedTuple):
    """A question and the start of its answer (both may hold ``{vector}``): one prompt to train or ask with."""

    question: str
    answer_prefix: str = ""


def check_question(question: str) -> str:
    """``question`` if it holds ``{vector}`` (where the soft token goes), else a one-line error."""
    if not isinstance(question, str) or not question.strip():
        raise SelfieError("a question is empty; write one with {vector} where the vector goes, e.g. "
                          "--question 'Is {vector} a place? Answer yes or no.'")
    if VECTOR_FIELD not in question:
        raise SelfieError(f"question {question!r} has no {VECTOR_FIELD}; put {VECTOR_FIELD} where the vector goes, "
                          "e.g. 'Is {vector} a place? Answer yes or no.'")
    return question


def check_questions(questions: Sequence[str]) -> tuple[str, ...]:
    """Each question checked; duplicates refused (they would be one row key twice)."""
    if not questions:
        raise SelfieError("give at least one question: --question 'What colour is {vector}?' (or --questions-file)")
    seen: set[str] = set()
    for q in questions:
        check_question(q)
        if q in seen:
            raise SelfieError(f"question {q!r} is given twice; each question is its own row key")
        seen.add(q)
    return tuple(questions)


def question_template(tokenizer, question: str, injection_token: str, answer_prefix: str = "") -> PromptTemplate:
    """The prompt of ``question`` with ``injection_token`` at every ``{vector}`` (also in ``answer_prefix``)."""
    check_question(question)
    turn = user_turn(tokenizer, question.replace(VECTOR_FIELD, injection_token))
    return PromptTemplate(turn + answer_prefix.replace(VECTOR_FIELD, injection_token), injection_token)


def check_choices(choices: Sequence[str]) -> tuple[str, ...]:
    """At least two distinct, non-empty choices."""
    choices = tuple(choices)
    empty = [i for i, c in enumerate(choices) if not isinstance(c, str) or not c.strip()]
    if empty:
        raise SelfieError(f"choice {empty[0] + 1} of {len(choices)} is empty; every choice needs text "
                          "(e.g. --choices yes no)")
    if len(choices) < 2:
        raise SelfieError(f"give at least two choices to compare, got {list(choices)}; e.g. --choices yes no")
    dupes = sorted({c for c in choices if choices.count(c) > 1})
    if dupes:
        raise SelfieError(f"choice {dupes[0]!r} is given twice; choices must differ")
    return choices


def choice_token_ids(tokenizer, prompt_text: str, choices: Sequence[str]) -> list[list[int]]:
    """Token ids of each choice as it continues ``prompt_text`` (tokenised together, so a leading space
    or a merge with the prompt's end is as the model would see it); choices that tokenise identically
    are refused, since they could not be told apart."""
    choices = check_choices(choices)
    base = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    out: list[list[int]] = []
    for c in choices:
        full = tokenizer(prompt_text + c, add_special_tokens=False)["input_ids"]
        ids = full[len(base):] if full[:len(base)] == base else tokenizer(c, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SelfieError(f"choice {c!r} tokenises to nothing; give it visible text")
        out.append(list(ids))
    for i, a in enumerate(out):
        for j in range(i):
            if out[j] == a:
                raise SelfieError(f"choices {choices[j]!r} and {choices[i]!r} tokenise identically ({a}); the model "
                                  "cannot tell them apart, so make them differ in their tokens")
    return out


def read_lines(path: str | os.PathLike, what: str) -> list[str]:
    """Non-blank lines of a UTF-8 text file (questions, choices), each stripped of its line break only."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"{what} not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SelfieError(f"{what} {path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if not lines:
        raise SelfieError(f"{what} {path} has no lines; write one per line")
    return lines

"""Ask a vector a question: the soft token in any question, answered freely or by scoring choices.

Free answers reuse describe's engine as is: an :class:`Interpreter` whose prompt is the question's
(:func:`asking`) generates to end-of-turn, batched, seeded and resumable exactly as descriptions are
(so the vLLM engine answers too). Choices are scored by their teacher-forced log-probability
(``choices.choice_logprobs``): one prompt pass per batch, no sampling.

Rows are keyed (question, index, scale, sample); a choice row has sample 0.

>>> interp.ask(vectors, "What colour is {vector}?")[0].answer
'Zorvak is red.'
>>> interp.ask(vectors, "Is {vector} a city?", choices=["yes", "no"])[0].probs
{'yes': 0.91, 'no': 0.09}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from ..models.tokens import pad_token_id
from .choices import choice_logprobs
from .question import check_choices, check_questions, choice_token_ids, question_template

AskKey = tuple[str, int, float, int]  # (question, index, scale, sample)
KEY_FIELDS = ("question", "index", "scale", "sample")


@dataclass(frozen=True)
class Answer:
    """A free answer: the generated text up to end-of-turn (``closed``: it got there within the limit)."""

    question: str
    index: int
    scale: float
    sample: int
    answer: str
    logprob: float  # mean log-prob of the generated tokens
    closed: bool

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChoiceScores:
    """Choices scored: ``probs`` normalised over the choices, ``choice`` their argmax, ``mass`` the model's
    total probability on any of them (low: the question is not answered in these terms)."""

    question: str
    index: int
    scale: float
    sample: int
    choice: str
    probs: dict[str, float]
    logprobs: dict[str, float]  # summed over each choice's tokens
    mass: float

    def to_row(self) -> dict:
        return asdict(self)


def row_key(row: dict) -> AskKey:
    """The (question, index, scale, sample) key of a written ask row."""
    return (row["question"], row["index"], float(row["scale"]), row["sample"])


def asking(interp, question: str, answer_prefix: str = ""):
    """A view of ``interp`` whose prompt is ``question`` (same model, adapter, mean, injection token); it
    stops at end-of-turn only, so its descriptions' ``text`` is the whole answer."""
    view = copy.copy(interp)
    view.template = question_template(interp.tokenizer, question, interp.template.injection_token, answer_prefix)
    view.prompt_ids, view.sites = view.template.encode(interp.tokenizer)
    view.stop_ids = sorted(interp.eos_ids)
    return view


def iter_ask(interp, vectors: torch.Tensor, questions: Sequence[str], *, choices: Sequence[str] | None = None,
             answer_prefix: str = "", scales: Sequence[float] | None = None, samples: int = 1,
             skip: Iterable[AskKey] = (), indices: Sequence[int] | None = None,
             progress: Callable[[int], None] | None = None, batch_size: int = 32,
             **generation) -> Iterator[list[Answer] | list[ChoiceScores]]:
    """One list of rows per batch: every question × vector × scale (× sample for free answers).

    ``choices``: score them instead of generating (``generation`` is then unused); ``skip``: keys done.
    """
    questions = check_questions(questions)
    done = set(skip)
    for q in questions:
        view = asking(interp, q, answer_prefix)
        mine = {(i, s, k) for (qq, i, s, k) in done if qq == q}
        if choices is not None:
            yield from _iter_choices(view, vectors, q, check_choices(choices), scales=scales, skip=mine,
                                     indices=indices, progress=progress, batch_size=batch_size)
            continue
        for batch in view.iter_describe(vectors, scales=scales, samples=samples, skip=mine, indices=indices,
                                        progress=progress, batch_size=batch_size, **generation):
            yield [Answer(q, d.index, d.scale, d.sample, d.text.strip(), d.logprob, d.closed) for d in batch]


def _iter_choices(view, vectors: torch.Tensor, question: str, choices: tuple[str, ...], *, scales, skip, indices,
                  progress, batch_size: int) -> Iterator[list[ChoiceScores]]:
    from .describe import _as_matrix

    vectors = _as_matrix(vectors, view.model.config.hidden_size)
    indices = list(range(len(vectors))) if indices is None else list(indices)
    scales = tuple(float(s) for s in (scales or view.default_scales))
    ids = choice_token_ids(view.tokenizer, view.template.text, choices)
    jobs = [(row, indices[row], s) for row in range(len(vectors)) for s in scales if (indices[row], s, 0) not in skip]
    todo = sorted({row for row, _, _ in jobs})
    where = {row: u for u, row in enumerate(todo)}
    base = view.adapter.prepare(view._centred(vectors[todo])) if jobs else None  # (U, d): x̂ once per vector
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        rows = torch.tensor([where[row] for row, _, _ in batch], device=base.device)
        scale = torch.tensor([s for _, _, s in batch], dtype=torch.float32, device=base.device)
        soft = view.adapter.scaled_transform(base[rows], scale, prepared=True)  # (b, d)
        lp = choice_logprobs(view.model, view.prompt_ids, view.sites, soft, ids, inject_layer=view.inject_layer,
                             pad_id=pad_token_id(view.tokenizer)).cpu()  # (b, C)
        probs = lp.softmax(-1)
        yield [_scored(question, index, s, choices, lp[b].tolist(), probs[b].tolist())
               for b, (_, index, s) in enumerate(batch)]
        if progress is not None:
            progress(len(batch))


def _scored(question: str, index: int, scale: float, choices: tuple[str, ...], lp: list[float],
            probs: list[float]) -> ChoiceScores:
    best = max(range(len(choices)), key=lambda j: lp[j])
    return ChoiceScores(question, index, scale, 0, choices[best], dict(zip(choices, probs)),
                        dict(zip(choices, lp)), sum(math.exp(x) for x in lp))

"""Ask vectors questions into an owned JSONL output, resumably: the path behind `selfie ask`.

The vectors, model, adapter and generation settings are a :class:`~.resumable.DescribeRun` (same
sources, ``--features``, ``--prompts --layer``, ``--mean-vectors``, engines); :class:`AskRun` adds the
questions, the answer prefix and the choices, which are recorded beside OUT with the rest, so a rerun
resumes and a run with other questions is refused unless ``overwrite``.

>>> ask_source(AskRun(DescribeRun(model="toy", source=VectorSource.parse("v.safetensors")),
...                   questions=("Is {vector} a city?",), choices=("yes", "no")), "answers.jsonl")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..engines.choice import check_engine
from ..errors import SelfieError
from ..runs.row_log import JsonlLog
from .ask import KEY_FIELDS, asking, row_key
from .question import check_choices, check_questions, choice_token_ids
from .resumable import DescribeRun, Progress, claim_run, open_engine

ASK_REFUSES = {"relevancy": "--relevancy is a describe option (per-token relevancy of a description)"}


@dataclass(frozen=True)
class AskRun:
    """One `selfie ask`: the vectors and generation settings (``vectors``), the questions, an optional answer
    prefix (the start of the assistant's turn, may hold ``{vector}``) and optional choices to score."""

    vectors: DescribeRun
    questions: Sequence[str]
    choices: Sequence[str] | None = None
    answer_prefix: str = ""

    def check(self) -> None:
        """Everything checkable without a model: questions, choices, engine support."""
        check_questions(self.questions)
        if self.choices is not None:
            check_choices(self.choices)
        run = self.vectors
        if run.relevancy:
            raise SelfieError(ASK_REFUSES["relevancy"])
        if self.choices is not None and run.engine != "hf":
            raise SelfieError("--choices needs a teacher-forced pass over the choices, which --engine vllm does not "
                              "give with prompt embeddings; use --engine hf (the default)")

    def inputs(self) -> dict:
        """What the rows depend on besides the vectors' settings."""
        return {"questions": list(self.questions), "answer_prefix": self.answer_prefix,
                "choices": list(self.choices) if self.choices is not None else None}


def ask_source(run: AskRun, out: str | os.PathLike, *, overwrite: bool = False,
               progress: Progress | None = None) -> Path:
    """Answer ``run``'s questions about its vectors into ``out`` (JSONL, one row per question × vector ×
    scale × sample); a rerun with the same inputs resumes."""
    run.check()
    v = run.vectors.with_defaults()
    check_engine(v.engine, v.model, inject_layer=v.inject_layer)
    with claim_run(v, out, command="ask", key_fields=KEY_FIELDS, overwrite=overwrite,
                   extra_inputs=run.inputs()) as claimed:
        engine = open_engine(v, claimed.adapter, claimed.mean, claimed.model, claimed.tokenizer)
        check_prompts(engine, run)
        write_answers(claimed.log, engine, claimed.vectors, claimed.indices, run, progress=progress)
    return Path(out)


def check_prompts(engine, run: AskRun) -> None:
    """Every question renders with the engine's injection token, and the choices tokenise apart after it:
    checked once the tokenizer is there and before any row is computed."""
    for q in run.questions:
        view = asking(engine, q, run.answer_prefix)
        if run.choices is not None:
            choice_token_ids(engine.tokenizer, view.template.text, run.choices)


def write_answers(log: JsonlLog, engine, vectors, indices: Sequence[int], run: AskRun,
                  progress: Progress | None = None) -> list[dict]:
    """Append every (question, index, scale, sample) row ``log`` lacks; returns all its rows."""
    v = run.vectors
    scales = tuple(v.scales or engine.default_scales)
    done = log.done_keys(row_key)
    per_q = len(vectors) * len(scales) * (1 if run.choices is not None else v.samples)
    total = per_q * len(run.questions)
    tick = progress(total, min(len(done), total)) if progress is not None else None
    generation = {} if run.choices is not None else {
        "max_new_tokens": v.max_new_tokens, "temperature": v.temperature, "top_p": v.top_p, "seed": v.seed}
    for batch in engine.iter_ask(vectors, run.questions, choices=run.choices, answer_prefix=run.answer_prefix,
                                 scales=scales, samples=v.samples, skip=done, indices=list(indices), progress=tick,
                                 batch_size=v.batch_size, **generation):
        log.append([a.to_row() for a in batch])
    return log.rows

"""`selfie ask`: put a vector into any question; free answers or scored choices (thin over ``interpret.ask_run``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from ..errors import SelfieError
from ..threads import configure_threads
from .app import app
from .checks import check_model_name
from .options import (
    AllowMismatchOpt,
    DeviceOpt,
    DtypeOpt,
    InjectionTokenOpt,
    InjectLayerOpt,
    ModelOpt,
    TemplateOpt,
    ThreadsOpt,
    parse_indices,
)

QUESTION_HELP = ("Question with {vector} where the soft token goes (one or more places), rendered in the model's "
                 "chat template; repeat for several (each is its own row key).")


@app.command()
def ask(
    model: ModelOpt,
    out: Path = typer.Option(..., help="Output JSONL; re-running with the same file resumes."),
    question: list[str] | None = typer.Option(None, help=QUESTION_HELP),
    questions_file: Path | None = typer.Option(None, help="UTF-8 file, one question per line (with {vector})."),
    choices: list[str] | None = typer.Option(None, help="Score these answers instead of generating, e.g. "
                                             "--choices yes no: teacher-forced log-probabilities, normalised over "
                                             "the choices, and the argmax."),
    choices_file: Path | None = typer.Option(None, help="UTF-8 file, one choice per line (leading spaces kept)."),
    answer_prefix: str = typer.Option("", help="Start of the assistant's answer, after which the model answers or "
                                      "the choices are scored (may hold {vector}), e.g. '{vector} is'."),
    adapter: str | None = typer.Option(None, help="Adapter file or hub reference; none = untrained baseline."),
    scale: list[float] | None = typer.Option(None, help="Soft-token scale(s); repeat to sweep."),
    vectors: str | None = typer.Option(None, help="Vector source, as for describe: FILE, FILE#KEY, "
                                       "sae-lens:RELEASE/ID or a local SAE file."),
    features: str | None = typer.Option(None, help="Rows to ask about, e.g. '0,5,10-20' (default: every row)."),
    prompts: Path | None = typer.Option(None, help="Ask about the state after block --layer at the last token of "
                                        "each prompt."),
    chat: bool = typer.Option(True, "--chat/--raw", help="With --prompts: chat template (default) or raw text."),
    mean_vectors: Path | None = typer.Option(None, help="Mean vectors to subtract (contrastive)."),
    layer: int | None = typer.Option(None, help="Layer L of --prompts and of the layer_{L} mean to subtract."),
    samples: int = typer.Option(1, min=1, help="Free answers per vector and scale (not with --choices)."),
    max_new_tokens: int = typer.Option(40, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(32, min=1),
    inject_layer: InjectLayerOpt = None,
    template: TemplateOpt = None,
    injection_token: InjectionTokenOpt = None,
    allow_model_mismatch: AllowMismatchOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    engine: str = typer.Option("hf", help="hf, or vllm for free answers (no --choices, no --inject-layer)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out instead of resuming it."),
    ray: str | None = typer.Option(None, help="Not supported by ask yet (refused): run without --ray."),
    threads: ThreadsOpt = None,
) -> None:
    """Ask vectors a question; writes one JSONL row per (question, vector, scale, sample).

    Example: selfie ask --model smollm2-135m-instruct --adapter final.safetensors --vectors states.safetensors
      --question "Is {vector} a city? Answer yes or no." --choices yes no --out probes.jsonl

    The soft token (adapter, or untrained with --scale) replaces each {vector}; --template/--injection-token
    choose the injection token as for describe. Without --choices the model answers freely to end-of-turn.
    """
    check_model_name(model)  # a mistyped name fails before torch is imported
    configure_threads(threads)
    from ..interpret.ask_run import AskRun, ask_source
    from ..interpret.question import check_choices, check_questions, read_lines
    from ..interpret.resumable import DescribeRun
    from .checks import check_device, check_sampling, check_scales, check_template
    from .core import _source_from_options
    from .display import console, progress_hook

    if ray is not None:
        raise SelfieError("--ray is not supported by `selfie ask` yet; run without --ray (one process), or shard "
                          "the vectors with --features")
    asked = check_questions(list(question or []) + (read_lines(questions_file, "questions file")
                                                    if questions_file else []))
    given = list(choices or []) + (read_lines(choices_file, "choices file") if choices_file else [])
    picked = check_choices(given) if (choices is not None or choices_file is not None) else None
    if picked is not None and samples != 1:
        raise SelfieError("--samples is for free answers; --choices scores each vector once (no sampling)")
    scales = check_scales(scale)
    check_sampling(temperature, top_p)
    check_device(device)
    check_template(template, injection_token)
    source = _source_from_options(vectors, None, None, None)
    rows = parse_indices(features, "--features") if features and source is not None else None
    run = AskRun(DescribeRun(model=model, source=source, features=rows, prompts=prompts, layer=layer, chat=chat,
                             adapter=adapter, mean_vectors=mean_vectors, scales=scales, samples=samples,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                             batch_size=batch_size, inject_layer=inject_layer, template=template,
                             injection_token=injection_token, allow_model_mismatch=allow_model_mismatch,
                             dtype=dtype, device=device, engine=engine),
                 questions=asked, choices=picked, answer_prefix=answer_prefix)
    with progress_hook("asking", unit="answers") as progress:
        ask_source(run, out, overwrite=overwrite, progress=progress)
    console.print(f"wrote {out}", highlight=False)
    print_answer_summary(out, picked)


def print_answer_summary(out: Path, choices: tuple[str, ...] | None) -> None:
    """Per question: how often each choice won (choices), or the most common answers (free)."""
    from ..files import read_jsonl
    from .display import console

    by_question: dict[str, Counter] = {}
    for row in read_jsonl(out, what="answers"):
        by_question.setdefault(row["question"], Counter())[row["choice" if choices else "answer"]] += 1
    for q, counts in by_question.items():
        top = ", ".join(f"{a!r} ×{n}" for a, n in counts.most_common(4))
        console.print(f"{q}: {top}", highlight=False, soft_wrap=True)

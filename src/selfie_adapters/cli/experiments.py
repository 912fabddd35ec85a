"""`selfie experiment topics`: a thin command over ``selfie_adapters.experiments``."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

from pathlib import Path

import typer

from ..adapters.kind_names import trainable_kind_names
from ..errors import SelfieError
from ..threads import configure_threads
from .app import app
from .display import console, print_table
from .options import ThreadsOpt

TRAINABLE = trainable_kind_names()
experiment_app = typer.Typer(no_args_is_help=True, help="Experiments that run the whole pipeline on a model.")
app.add_typer(experiment_app, name="experiment")


@experiment_app.command()
def topics(
    out: Path = typer.Option(Path("topics-experiment"), help="Folder for report.json, report.md, "
                             "topics.png, adapters and descriptions; re-running resumes."),
    model: str = typer.Option("smollm2-135m-instruct", help="Model: catalogue name, hub id, folder or .gguf."),
    topics_file: Path | None = typer.Option(None, "--topics", help="Titles: one per line, or JSONL with "
                                            "\"title\" (default: 3,000 Wikipedia vital articles, packaged)."),
    num_topics: int = typer.Option(1000, min=0, help="Topics drawn (seeded) from the file; 0 = all."),
    heldout: int = typer.Option(200, min=1, help="Held-out topics (never trained on)."),
    layers: list[int] = typer.Option([18], "--layers", help="Residual stream after block L; several sweep "
                                     "(--layers 6 12 18)."),
    kind: list[str] = typer.Option(["scalar_affine", "full_rank"], help=f"Adapter kind(s): {', '.join(TRAINABLE)}."),
    steps: int = typer.Option(150, min=1, help="Training steps per adapter kind."),
    batch_size: int = typer.Option(32, min=1),
    lr: float = typer.Option(1e-2, help="Learning rate."),
    rank: int = typer.Option(16, min=1, help="Rank of the low-rank kinds."),
    init_scale: float | None = typer.Option(None, help="Adapter init scale (default: mean embedding norm)."),
    autocast: str | None = typer.Option(None, help="bfloat16 or float16: train with the frozen model under "
                                        "autocast (about 2x faster on CPU; the loss stays fp32)."),
    max_new_tokens: int = typer.Option(16, min=1),
    seed: int = typer.Option(0),
    score: bool = typer.Option(True, "--score/--no-score", help="Score by retrieval (needs the eval extra); "
                               "--no-score describes only — rerun with --score elsewhere to score the same run."),
    score_only: bool = typer.Option(False, "--score-only", help="Only score a run described elsewhere with "
                                    "--no-score (e.g. on a GPU machine): reads --out, loads no model."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
    threads: ThreadsOpt = None,
) -> None:
    """The topic experiment: train adapters on `Tell me about {title}.` vectors, describe held-out
    topics, score by retrieval among the held-out titles, next to untrained SelfIE at its best scale.

    \b
    Example: selfie experiment topics --model smollm2-135m-instruct --layers 12 18 --out topics-run
    """
    configure_threads(threads)
    from ..experiments.topics import TopicsConfig, run_topics, score_run
    from ..training.config import AUTOCAST_DTYPES

    if score_only:
        _write_report(score_run(out), out)
        return
    bad = [k for k in kind if k not in TRAINABLE]
    if bad:
        raise SelfieError(f"unknown adapter kind(s) {bad}; valid: {', '.join(TRAINABLE)}")
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise SelfieError(f"--autocast {autocast!r} is not one of: {', '.join(AUTOCAST_DTYPES)}")
    if topics_file is not None and not topics_file.is_file():
        raise SelfieError(f"topics file not found: {topics_file}")
    cfg = TopicsConfig(model=model, topics_file=str(topics_file) if topics_file else None, num_topics=num_topics,
                       heldout=heldout, layers=tuple(layers), kinds=tuple(kind), steps=steps, batch_size=batch_size,
                       learning_rate=lr, rank=rank, init_scale=init_scale, max_new_tokens=max_new_tokens, seed=seed,
                       score=score, device=device, autocast=autocast)
    report = run_topics(cfg, out, say=lambda s: console.print(s, highlight=False))
    if not score:
        console.print(f"described, not scored: {out / 'report.json'} (score it with --score-only, no model "
                      "needed)", highlight=False)
        return
    _write_report(report, out)


def _write_report(report: dict, out: Path) -> None:
    from ..experiments.topics_report import COLUMNS, markdown, save_figure, table_rows

    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    figure = save_figure(report, out / "topics.png")
    print_table(f"held-out topic retrieval ({report['heldout_topics']} titles)", list(COLUMNS), table_rows(report))
    console.print(f"report: {out / 'report.json'}\ntable and examples: {out / 'report.md'}\nfigure: {figure}",
                  highlight=False)

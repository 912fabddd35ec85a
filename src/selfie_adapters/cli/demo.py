"""`selfie demo`: the offline toy world, end to end."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..errors import SelfieError
from ..modeling import check_layers
from ..projections import trainable_kinds
from ..toy.model import TOY_BLOCKS
from .app import app

TRAINABLE = trainable_kinds()


@app.command()
def demo(
    kind: list[str] | None = typer.Option(None, help=f"Adapter kind(s) to train; default all of {TRAINABLE}."),
    seed: int = typer.Option(0, help="Seed for the split, adapter init and data order."),
    layer: int = typer.Option(1, help="Vectors = residual stream after this block of the 4-block toy model."),
    steps: int = typer.Option(200, min=1, help="Training steps per adapter kind."),
    out: Path = typer.Option(Path("selfie-demo"), help="Folder for report.json, demo.png and the adapters."),
) -> None:
    """Watch SelfIE work offline: a tiny Llama trained on a made-up world describes concepts it
    was never asked about, through trained adapters, while untrained SelfIE fails.

    Example: selfie demo --kind scalar_affine --kind full_rank --seed 1
    """
    from ..toy.demo import run_demo
    from ..toy.experiment import ExperimentConfig

    kinds = tuple(kind) if kind else tuple(TRAINABLE)
    bad = [k for k in kinds if k not in TRAINABLE]
    if bad:
        raise SelfieError(f"unknown adapter kind(s) {bad}; valid: {', '.join(TRAINABLE)}")
    check_layers(TOY_BLOCKS, [layer], "--layer")
    console = Console()
    report, figure = run_demo(ExperimentConfig(kinds=kinds, seed=seed, layer=layer, steps=steps), out, console)
    console.print(f"report: {report}\nfigure: {figure}", highlight=False)

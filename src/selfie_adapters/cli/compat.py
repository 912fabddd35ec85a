"""`selfie convert`: files of the reference implementation → this project's formats."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

from pathlib import Path

import typer

from ..convert import convert
from .app import app


@app.command("convert")
def convert_command(
    source: Path = typer.Argument(..., help="A reference .pt: mean vector (..._l{L}_mean.pt), adapter checkpoint, "
                                  "or training checkpoint ({run}_step_N[_best|_final].pt)."),
    out: Path = typer.Option(..., help="Output file (.safetensors) for a mean or an adapter; a run folder for a "
                             "training checkpoint."),
    layer: int | None = typer.Option(None, help="Layer of a bare mean vector whose file name does not say it."),
    set_: list[str] = typer.Option([], "--set", help="Training checkpoint: override a config field "
                                   "(section.key=value), e.g. --set data.labels_file=labels.json."),
) -> None:
    """Convert a reference-implementation file (read with weights_only=True).

    Example: selfie convert checkpoints/run_step_500.pt --out runs/goodfire-sa
    """
    result = convert(source, out, layer=layer, overrides=set_)
    for path in result.paths:
        print(f"wrote {path}")
    if result.next_step:
        print(f"next: {result.next_step}")

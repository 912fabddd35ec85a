"""`selfie models` (the catalogue of short names) and `selfie models export` (a safetensors folder)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..models.catalogue import catalogue_rows
from .app import app
from .display import console, print_table
from .options import DtypeOpt

models_app = typer.Typer(help="Short model names accepted by every --model (besides hub ids, folders and "
                         "folder/file.gguf); `export` writes one as a safetensors folder.")
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
def models(ctx: typer.Context) -> None:
    """Short model names accepted by every --model (besides hub ids, folders and folder/file.gguf)."""
    if ctx.invoked_subcommand is None:
        print_table("model catalogue", ["name", "source", "what"], catalogue_rows())


@models_app.command("export")
def export(name: str = typer.Argument(..., help="Catalogue name, hub id, folder or folder/file.gguf."),
           out: Path = typer.Option(..., help="Folder to write (config, model.safetensors, tokenizer)."),
           dtype: DtypeOpt = "auto",
           overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty --out.")) -> None:
    """Write a model as a plain HF safetensors folder (GGUF dequantised), e.g. for --engine vllm.

    \b
    Example: selfie models export smollm2-135m-instruct --out smollm2-135m
      then: selfie describe --model smollm2-135m --engine vllm ...
    """
    from ..models.export import export_model

    export_model(name, out, dtype=dtype, overwrite=overwrite)
    console.print(f"wrote {out}", highlight=False)

"""`selfie convert`: files of the reference implementation → this project's formats."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

from pathlib import Path

import typer

from ..labels.formats import EXPORT_FORMATS, export_format
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

    \b
    Example: selfie convert checkpoints/run_step_500.pt --out runs/goodfire-sa
    """
    from ..compat.convert import convert

    result = convert(source, out, layer=layer, overrides=set_)
    for path in result.paths:
        print(f"wrote {path}")
    if result.next_step:
        print(f"next: {result.next_step}")


FORMAT_HELP = " or ".join(f"{name} ({f.help})" for name, f in EXPORT_FORMATS.items()) + "."
labels_app = typer.Typer(no_args_is_help=True, help="Labels to and from other tools (Neuronpedia, delphi).")
app.add_typer(labels_app, name="labels")


@labels_app.command("export")
def labels_export(
    rows: Path = typer.Argument(..., help="`selfie describe` output (JSONL: index, label, scale, ...)."),
    out: Path = typer.Option(..., help="neuronpedia: a .json / .jsonl / .jsonl.gz file; delphi: a folder."),
    format_: str = typer.Option("neuronpedia", "--format", metavar="|".join(EXPORT_FORMATS), help=FORMAT_HELP),
    model_id: str | None = typer.Option(None, help="Neuronpedia modelId (default: from the rows' settings "
                                        "record, e.g. llama3.1-8b-it)."),
    source: str | None = typer.Option(None, help="Neuronpedia source id, its 'layer' field (default: from the "
                                      "record, e.g. 19-resid-post-gf)."),
    explanation_model: str | None = typer.Option(None, help="Neuronpedia explanationModelName (default: the "
                                                 "adapter's file name, or selfie-untrained)."),
    module: str | None = typer.Option(None, help="delphi module: files are {module}_latent{index}.txt "
                                      "(default: layers.L, L from the record)."),
) -> None:
    """Write labels as Neuronpedia explanation rows or a delphi explanations folder.

    The model, layer and adapter come from ROWS.settings.json (written by `selfie describe` beside the
    rows); a flag overrides them; a field neither gives is a placeholder, named on stderr.

    \b
    Example: selfie labels export labels.jsonl --format neuronpedia --out explanations.json
    """
    from ..errors import SelfieError
    from ..files import read_jsonl
    from ..labels.naming import export_settings
    from .display import console

    data = read_jsonl(rows, what="labels")
    if any("index" not in r for r in data):
        raise SelfieError(f"{rows}: every row needs 'index' and 'label' (as `selfie describe` writes)")
    fmt = export_format(format_)
    flags = {"model_id": model_id, "source": source, "explanation_model": explanation_model, "module": module}
    settings = export_settings(rows, {k: v for k, v in flags.items() if v is not None})
    for line in settings.invented_lines(fmt.fields):
        console.print(line, style="yellow", highlight=False, soft_wrap=True)
    paths = fmt.write(data, out, **settings.values)
    print(f"wrote {len(paths)} explanations to {out}" if fmt.folder else f"wrote {paths[0]}")


@labels_app.command("import")
def labels_import(
    export: Path = typer.Argument(..., help="A Neuronpedia explanations export (JSON array or JSONL, .gz too)."),
    out: Path = typer.Option(..., help="Training labels file (the reference's sections JSON)."),
    dataset_name: str = typer.Option("neuronpedia", help="dataset_name of the section."),
    layer: int = typer.Option(..., help="Layer of the vectors (e.g. 19)."),
    val_fraction: float = typer.Option(0.1, help="Fraction of latents marked 'val' (seeded)."),
    seed: int = typer.Option(42),
) -> None:
    """Turn Neuronpedia explanations into training labels (vectors from data.vectors_file, e.g. an SAE).

    \b
    Example: selfie labels import explanations.jsonl.gz --layer 19 --out labels.json
    """
    from ..files import write_json
    from ..labels.formats import neuronpedia_training_sections, read_neuronpedia

    sections = neuronpedia_training_sections(read_neuronpedia(export), dataset_name=dataset_name, layer=layer,
                                             val_fraction=val_fraction, seed=seed)
    write_json(out, sections)
    n = len(sections[0]["vectors"])
    print(f"wrote {out}: {n} latents, {sum(len(v['labels']) for v in sections[0]['vectors'])} labels; train with "
          "data.vectors_file (e.g. sae-lens:<release>/<sae_id>)")

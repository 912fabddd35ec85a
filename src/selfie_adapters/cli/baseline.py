"""`selfie baseline nearest`: the nearest-neighbour baseline as describe-style rows (no model, no training)."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

from pathlib import Path

import typer

from .app import baseline_app
from .display import console, progress_hook
from .options import parse_indices


@baseline_app.command()
def nearest(
    labels: Path = typer.Option(..., help="Training data in the trainer's syntax: the reference labels JSON "
                                "(train/val split) or JSONL rows; its 'train' entries are the neighbours."),
    out: Path = typer.Option(..., help="Output JSONL (describe's rows); re-running with the same file resumes."),
    vectors: str | None = typer.Option(None, help="Held-out vectors (FILE, FILE#KEY, sae-lens:RELEASE/ID, as "
                                       "describe --vectors); default: the labels file's 'val' entries."),
    features: str | None = typer.Option(None, help="With --vectors: rows to label, e.g. '0,5,10-20'."),
    labels_vectors: str | None = typer.Option(None, help="Vectors the labels file's indices refer to, when it "
                                              "names no 'filename' (as data.vectors_file)."),
    neighbours: int = typer.Option(1, "--neighbours", "-k", min=1, help="Neighbours whose labels are written, "
                                   "nearest first (sample 0 = the nearest one's label)."),
    centre: bool = typer.Option(True, "--centre/--no-centre", help="Subtract the training mean before the "
                                "cosine (anisotropy-centred; default)."),
    strip_labels: bool = typer.Option(False, "--strip-labels", help="Strip whitespace from labels "
                                      "(as data.strip_labels)."),
    batch_size: int = typer.Option(1024, min=1, help="Held-out vectors compared (and written) at once."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out instead of resuming it."),
) -> None:
    """Label each held-out vector with the label(s) of its nearest training vector (cosine after centring).

    The zero-training baseline every adapter should beat: its rows are `selfie describe` rows (scale 0,
    plus neighbour, rank and similarity), so `selfie eval retrieval`, `eval generation` and the exports
    read them as they read an adapter's.

    Example: selfie baseline nearest --labels labels.json --out nearest.jsonl
    """
    from ..errors import SelfieError
    from ..evals.nearest import NearestRun, nearest_labels
    from ..files import read_jsonl
    from ..interpret.resumable import label_spreads
    from ..vectors.rows import skipped_note
    from ..vectors.source import VectorSource

    source = VectorSource.parse(vectors) if vectors is not None else None
    if features is not None and source is None:
        raise SelfieError("--features picks rows of --vectors; without --vectors the held-out set is the labels "
                          "file's val split")
    rows = parse_indices(features, "--features") if features is not None else None
    run = NearestRun(labels_file=labels, labels_vectors=labels_vectors, heldout=source, features=rows,
                     neighbours=neighbours, centre=centre, strip_labels=strip_labels, batch_size=batch_size)
    with progress_hook("nearest neighbours", unit="vectors") as progress:
        nearest_labels(run, out, overwrite=overwrite, progress=progress)
    console.print(f"wrote {out}", highlight=False)
    if (note := skipped_note(out)) is not None:
        console.print(note, style="yellow", highlight=False)
    for spread in label_spreads(read_jsonl(out, what="descriptions")).values():
        console.print(spread.summary(), highlight=False, soft_wrap=True)  # one line: distinct labels

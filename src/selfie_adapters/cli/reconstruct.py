"""`selfie train-reconstructor CONFIG` and `selfie score`: the reverse direction (text → vector)."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

from pathlib import Path

import typer

from ..threads import configure_threads
from .app import app
from .display import console, progress_hook
from .options import AllowMismatchOpt, DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt
from .train import print_training_result


@app.command("train-reconstructor")
def train_reconstructor_command(
    config: Path = typer.Argument(..., help="Training config: an adapter's YAML (the same data) plus an optional "
                                  "'reconstructor' section (prompt, chat, layer, pooling)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.key=value, repeatable, e.g. "
                                   "--set reconstructor.layer=18 --set projection.type=low_rank_only."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its training state (exactly)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run folder that holds a run."),
    threads: ThreadsOpt = None,
) -> None:
    """Train a reconstructor (label → vector) on the labels an adapter trains on; prints where it went.

    The frozen model reads each label once (its states are cached), then a head from the adapter kinds
    (default full_rank) learns to map them to the vectors; loss and scores are NLA's mse_nrm / fve_nrm.

    Example: selfie train-reconstructor examples/goodfire-l19-scalar-affine.yaml --set training.max_steps=500
    """
    from ..reconstruct.config import load_reconstruct_config
    from ..reconstruct.train import train_reconstructor

    configure_threads(threads)
    cfg = load_reconstruct_config(config, set_)
    result = train_reconstructor(cfg, resume=resume, overwrite=overwrite)
    print_training_result(result, "reconstructor", "val mse_nrm")


@app.command("score")
def score_command(
    model: ModelOpt,
    labels: Path = typer.Option(..., help="Labels: `selfie describe` JSONL, a Neuronpedia export (.json / .jsonl"
                                "[.gz]) or a delphi explanations folder."),
    vectors: str = typer.Option(..., help="The vectors the labels' indices name (FILE, FILE#KEY, sae-lens:R/ID)."),
    reconstructor: str = typer.Option(..., help="Reconstructor file, or 'roundtrip' (with --mean-vectors)."),
    out: Path = typer.Option(..., help="Output JSONL (one row per label, best per index marked); reruns resume."),
    mean_vectors: Path | None = typer.Option(None, help="Mean vectors subtracted from the vectors (as describe "
                                             "--mean-vectors) and, for roundtrip, from the read state."),
    layer: int | None = typer.Option(None, help="Layer of the --mean-vectors entry (roundtrip: the layer read)."),
    chat: bool = typer.Option(True, "--chat/--raw", help="roundtrip: read the label in the chat template."),
    batch_size: int = typer.Option(64, min=1),
    allow_model_mismatch: AllowMismatchOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out instead of resuming it."),
    threads: ThreadsOpt = None,
) -> None:
    """Round-trip scores (cos, centred cos, mse_nrm, fve_nrm) of every label in a labels file.

    Example: selfie score --model smollm2-135m-instruct --labels labels.jsonl --vectors states.safetensors
      --reconstructor rec.safetensors --out scores.jsonl
    """
    from ..reconstruct.choice import ReconstructorChoice
    from ..reconstruct.score_file import ScoreRun, mean_scores, score_labels_file
    from ..vectors.source import VectorSource
    from .checks import check_device

    check_device(device)
    configure_threads(threads)
    run = ScoreRun(model=model, labels=labels, vectors=VectorSource.parse(vectors),
                   reconstructor=ReconstructorChoice(reconstructor, mean_vectors=mean_vectors, layer=layer, chat=chat),
                   batch_size=batch_size, dtype=dtype, device=device, allow_model_mismatch=allow_model_mismatch)
    with progress_hook("scoring", unit="labels") as progress:
        rows = score_labels_file(run, out, overwrite=overwrite, progress=progress)
    console.print(f"wrote {out} ({len(rows)} labels)", highlight=False)
    for what, only_best in (("all labels", False), ("best per vector", True)):
        means = mean_scores(rows, only_best=only_best)
        console.print(f"{what}: " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()), highlight=False)

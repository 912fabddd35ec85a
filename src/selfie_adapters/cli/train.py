"""`selfie train CONFIG` and `selfie eval loss`: thin commands over ``selfie_adapters.training``."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..errors import SelfieError
from ..threads import configure_threads
from .app import app, eval_app
from .checks import check_device, check_model_name, check_scales
from .display import progress_bar
from .options import AllowMismatchOpt, DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt


@app.command("train")
def train_command(
    config: Path = typer.Argument(..., help="Training config (YAML: model, data, projection, soft_prompt, "
                                  "training, logging)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: section.key=value (value parsed as "
                                   "YAML); repeatable, e.g. --set training.max_steps=100."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its training state (exactly; "
                                "only how long to train and how often to log/evaluate/save may change)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in a run folder that already holds a "
                                   "run (its state, metrics and adapters are replaced)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    threads: ThreadsOpt = None,
) -> None:
    """Train a SelfIE adapter; prints where the best and final adapters were written.

    \b
    Example: selfie train examples/goodfire-l19-scalar-affine.yaml --set training.max_steps=200
    """
    configure_threads(threads)
    from rich.progress import TextColumn

    from ..training.config import load_config
    from ..training.trainer import train as run_training

    cfg = load_config(config, set_)
    if not progress:
        result = run_training(cfg, resume=resume, overwrite=overwrite)
    else:
        with progress_bar(TextColumn("{task.fields[info]}")) as bar:
            task = bar.add_task("train", total=None, info="")

            def show(step: int, total: int, info: dict) -> None:
                text = f"loss {info['loss']:.4f}  lr {info['lr']:.2e}  {info['steps_per_s']:.2f} step/s" if info else ""
                bar.update(task, completed=step, total=total, info=text)

            result = run_training(cfg, resume=resume, overwrite=overwrite, progress=show)
    print_training_result(result, "adapter", "val loss")


def print_training_result(result, artifact: str, loss_name: str) -> None:
    """Where a training run's time went, its best validation loss and the files it wrote."""
    print(f"time: {result.timing.summary()}")
    if result.best_path is None and result.final_path is None:
        print(f"stopped at step {result.global_step}; no {artifact} written (resume with --resume)")
        return
    if result.best_val_loss is not None:
        print(f"best {loss_name}: {result.best_val_loss:.4f}")
    print(f"best:  {result.best_path or '(no validation split)'}")
    print(f"final: {result.final_path or '(save_final_checkpoint is false)'}")


@eval_app.command("loss")
def loss_command(
    model: ModelOpt,
    labels: Path = typer.Option(..., help="Labels file (.json[.gz] sections or .jsonl), see docs/training.md."),
    adapter: str | None = typer.Option(None, help="Adapter file or hub reference; omit for the untrained "
                                       "baseline (identity + L2 normalisation) at --scale values."),
    scale: list[float] = typer.Option([], help="Soft token = adapter(scale · x/‖x‖); repeatable (one loss each)."),
    vectors: str | None = typer.Option(None, help="Vectors file when the labels file names none "
                                       "(.pt, .safetensors[#key], or sae-lens:<release>/<sae_id>)."),
    split: str = typer.Option("val", help="train or val."),
    val_fraction: float | None = typer.Option(None, help="Validate on int(n·f) examples drawn as the reference "
                                              "does (default: the adapter's training.val_fraction, else 1)."),
    seed: int | None = typer.Option(None, help="Seed of that draw (default: the adapter's config seed, else 42)."),
    batch_size: int | None = typer.Option(None, help="Examples per forward pass; the loss is a mean over batches, "
                                          "so the default is the adapter's training data.batch_size (the "
                                          "trainer's val loss exactly), else 80."),
    allow_model_mismatch: AllowMismatchOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per scale: loss, num_examples."),
    threads: ThreadsOpt = None,
) -> None:
    """The published "val loss" of an adapter, or of untrained SelfIE at each --scale.

    \b
    Example: selfie eval loss --model meta-llama/Llama-3.1-8B-Instruct --labels labels.json.gz
    --vectors w_dec.pt --scale 2.5 --scale 10
    """
    check_model_name(model)  # a mistyped name fails before torch is imported
    configure_threads(threads)
    from ..adapters.artifact import load_adapter
    from ..models.loading import load_model
    from ..training.evaluate import adapter_loss

    if adapter is None and not scale:
        raise SelfieError("give --adapter FILE, or --scale S (repeatable) for the untrained baseline")
    if batch_size is not None and batch_size < 1:
        raise SelfieError(f"--batch-size must be positive, got {batch_size}")
    scale = list(check_scales(scale) or ())
    check_device(device)
    ad = load_adapter(adapter) if adapter is not None else None
    lm, tok = load_model(model, dtype=dtype, device=device)
    rows = adapter_loss(lm, tok, ad, str(labels), vectors_file=vectors, split=split, batch_size=batch_size,
                        scales=scale or [1.0], allow_model_mismatch=allow_model_mismatch,
                        val_fraction=val_fraction, seed=seed)
    for row in rows:
        if as_json:
            sys.stdout.write(json.dumps(row) + "\n")
        else:
            print(f"scale {row['scale']:g}: {row['split']} loss {row['loss']:.4f} ({row['num_examples']} examples)")

"""`selfie demo`: the offline toy world, end to end — run the experiment, print tables, draw the figure."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..adapters.kinds import trainable_kinds
from ..errors import SelfieError
from ..files import read_jsonl
from ..models.tree import check_layers
from ..toy.concept_experiment import ExperimentConfig, run_experiment
from ..toy.lm import TOY_BLOCKS
from .app import app

TRAINABLE = trainable_kinds()
NEAREST_ROW = "nearest neighbour (no training)"


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
    kinds = tuple(kind) if kind else tuple(TRAINABLE)
    bad = [k for k in kinds if k not in TRAINABLE]
    if bad:
        raise SelfieError(f"unknown adapter kind(s) {bad}; valid: {', '.join(TRAINABLE)}")
    check_layers(TOY_BLOCKS, [layer], "--layer")
    console = Console()
    report, figure = run_demo(ExperimentConfig(kinds=kinds, seed=seed, layer=layer, steps=steps), out, console)
    console.print(f"report: {report}\nfigure: {figure}", highlight=False)


def run_demo(cfg: ExperimentConfig, out_dir: Path, console: Console, rows: int = 12) -> tuple[Path, Path]:
    """Run the experiment and show it; returns (report path, figure path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = run_experiment(cfg, out_dir, say=lambda s: console.print(f"[dim]{s}[/dim]", highlight=False))
    console.print(examples_table(report, rows))
    console.print(metrics_table(report))
    return out_dir / "report.json", plot_report(report, out_dir / "demo.png")


def best_kind(report: dict) -> str:
    return max(report["kinds"], key=lambda k: (report["kinds"][k]["heldout_recall_at_1"],
                                               -(report["kinds"][k]["val_loss"] or 0)))


def examples_table(report: dict, rows: int) -> Table:
    kind = best_kind(report)
    untrained = _labels(Path(report["descriptions"]["untrained"]))
    trained = _labels(Path(report["descriptions"][kind]))
    table = Table(title=f"Held-out concepts (never seen in training): untrained SelfIE vs {kind} adapter")
    for col in ("concept", "untrained description", f"trained ({kind})", "correct?"):
        table.add_column(col, overflow="fold")
    for name in report["heldout"][:rows]:
        ok = trained[name].split(",")[0].strip() == name
        table.add_row(name, untrained[name], trained[name], "yes" if ok else "no")
    return table


def metrics_table(report: dict) -> Table:
    table = Table(title=f"Toy world, layer {report['layer']}, {len(report['heldout'])} held-out concepts, "
                        f"{report['seconds']:.0f} s")
    for col in ("adapter", "params", "held-out recall@1", "attribute acc.", "val loss"):
        table.add_column(col, justify="right" if col != "adapter" else "left")
    b = report["baseline"]
    table.add_row(f"untrained (scale {b['scale']:.3g})", "0", f"{b['heldout_recall_at_1']:.2f}",
                  f"{b['attribute_accuracy']:.2f}", "-")
    if (n := report.get("nearest")) is not None:  # reports written before the baseline existed lack it
        table.add_row(NEAREST_ROW, "0", f"{n['heldout_recall_at_1']:.2f}", f"{n['attribute_accuracy']:.2f}", "-")
    for kind, m in report["kinds"].items():
        table.add_row(kind, f"{m['num_parameters']:,}", f"{m['heldout_recall_at_1']:.2f}",
                      f"{m['attribute_accuracy']:.2f}", f"{m['val_loss']:.3f}")
    return table


def plot_report(report: dict, path: Path) -> Path:
    """Two panels: validation loss per kind; held-out recall@1 per kind with the baseline beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(report["kinds"])
    short = [k.replace("scalar_affine", "SA").replace("_plus_", "+").replace("low_rank", "LR") for k in kinds]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar_label(ax1.bar(short, [report["kinds"][k]["val_loss"] for k in kinds], color="#4C72B0"), fmt="%.2f")
    ax1.set_title("validation loss (held-out concepts)")
    ax1.set_ylabel("cross-entropy per target token")
    base = [("untrained", report["baseline"])] + ([("nearest", report["nearest"])] if "nearest" in report else [])
    names = [name for name, _ in base] + short
    recalls = [m["heldout_recall_at_1"] for _, m in base] + [report["kinds"][k]["heldout_recall_at_1"] for k in kinds]
    ax2.bar_label(ax2.bar(names, recalls, color=["#999999"] * len(base) + ["#55A868"] * len(kinds)), fmt="%.2f")
    ax2.set_ylim(0, 1.1)
    ax2.set_title("held-out recall@1 (label names the concept)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"SelfIE adapters in the toy world (layer {report['layer']}, seed {report['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _labels(path: Path) -> dict[str, str]:
    return {r["id"]: r["label"] for r in read_jsonl(path, what="descriptions")}

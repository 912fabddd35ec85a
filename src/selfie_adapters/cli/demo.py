"""`selfie demo`: the offline toy world, end to end — run the experiment, print tables, draw the figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.console import Console
from rich.progress import TaskID, TextColumn
from rich.table import Table

from ..adapters.kind_names import trainable_kind_names
from ..errors import SelfieError
from ..files import read_jsonl, save_figure
from ..threads import configure_threads
from .app import app
from .display import progress_bar
from .options import ThreadsOpt

if TYPE_CHECKING:  # the toy model needs torch and transformers: imported when the demo runs
    from ..toy.concept_experiment import ExperimentConfig

TRAINABLE = trainable_kind_names()
NEAREST_ROW = "nearest neighbour (no training)"


@app.command()
def demo(
    kind: list[str] | None = typer.Option(None, help=f"Adapter kind(s) to train; default all of {TRAINABLE}."),
    seed: int = typer.Option(0, help="Seed for the split, adapter init and data order."),
    layer: int = typer.Option(1, help="Vectors = residual stream after this block of the 4-block toy model."),
    steps: int = typer.Option(200, min=1, help="Training steps per adapter kind."),
    out: Path = typer.Option(Path("selfie-demo"), help="Folder for report.json, demo.png and the adapters."),
    ask: bool = typer.Option(False, "--ask", help="Instead: ask held-out concepts attribute questions ('What colour "
                             "is {vector}?') through untrained, meaning-only and question-trained adapters "
                             "(one --kind, default the default kind), and time choices vs descriptions."),
    question_ratio: float = typer.Option(0.5, help="With --ask: share of question-answer pairs in training."),
    threads: ThreadsOpt = None,
) -> None:
    """Watch SelfIE work offline: a tiny Llama trained on a made-up world describes concepts it
    was never asked about, through trained adapters, while untrained SelfIE fails.

    \b
    Example: selfie demo --kind scalar_affine --kind full_rank --seed 1
    """
    configure_threads(threads)
    from ..models.tree import check_layers
    from ..toy.concept_experiment import ExperimentConfig
    from ..toy.lm import TOY_BLOCKS

    kinds = tuple(kind) if kind else tuple(TRAINABLE)
    bad = [k for k in kinds if k not in TRAINABLE]
    if bad:
        raise SelfieError(f"unknown adapter kind(s) {bad}; valid: {', '.join(TRAINABLE)}")
    check_layers(TOY_BLOCKS, [layer], "--layer")
    console = Console()
    if ask:
        run_ask_demo(kinds[0] if kind else None, seed, layer, steps, question_ratio, out, console)
        return
    report, figure = run_demo(ExperimentConfig(kinds=kinds, seed=seed, layer=layer, steps=steps), out, console)
    console.print(f"report: {report}\nfigure: {figure}", highlight=False)


def run_demo(cfg: ExperimentConfig, out_dir: Path, console: Console, rows: int = 12) -> tuple[Path, Path]:
    """Run the experiment and show it (a training bar per adapter kind); returns (report path, figure path)."""
    from ..toy.concept_experiment import run_experiment

    out_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar(TextColumn("{task.fields[info]}")) as bar:
        tasks: dict[str, TaskID] = {}

        def show(kind: str, step: int, total: int, info: dict) -> None:
            if kind not in tasks:
                tasks[kind] = bar.add_task(f"train {kind:<27}", total=total, info="")
            text = f"loss {info['loss']:.3f}  {info['steps_per_s']:.1f} step/s" if info else ""
            bar.update(tasks[kind], completed=step, info=text)

        report = run_experiment(cfg, out_dir, say=lambda s: bar.console.print(f"[dim]{s}[/dim]", highlight=False),
                                progress=show)
    console.print(examples_table(report, rows))
    console.print(metrics_table(report))
    return out_dir / "report.json", plot_report(report, out_dir / "demo.png")


def run_ask_demo(kind: str | None, seed: int, layer: int, steps: int, question_ratio: float, out_dir: Path,
                 console: Console) -> Path:
    """`selfie demo --ask`: run the ask experiment and print its table; returns the report's path."""
    from ..toy.ask_experiment import ATTRIBUTES, AskConfig, run_ask_experiment

    if not 0 < question_ratio < 1:
        raise SelfieError(f"--question-ratio must be between 0 and 1, got {question_ratio}")
    cfg = AskConfig(seed=seed, layer=layer, steps=steps, question_ratio=question_ratio,
                    **({"kind": kind} if kind else {}))
    report = run_ask_experiment(cfg, out_dir, say=lambda s: console.print(f"[dim]{s}[/dim]", highlight=False))
    table = Table(title=f"Toy world: attribute questions about {report['heldout']} held-out concepts "
                        f"(accuracy; choices / free answer)")
    table.add_column("soft token")
    for name in ATTRIBUTES:
        table.add_column(name, justify="right")
    titles = {"untrained": f"untrained (scale {report['untrained']['scale']:g})",
              "meaning_only": f"{cfg.kind}, meaning labels only", "with_questions": f"{cfg.kind}, + question pairs"}
    for key, title in titles.items():
        table.add_row(title, *[f"{report[key][a]['choices']:.2f} / {report[key][a]['free']:.2f}" for a in ATTRIBUTES])
    console.print(table)
    speed = report["speed"]
    console.print(f"probe speed: {speed['choices_per_s']:.1f} vectors/s scoring 8 colour choices vs "
                  f"{speed['describe_per_s']:.1f} vectors/s describing ({speed['speedup']:.1f}x)", highlight=False)
    console.print(f"report: {out_dir / 'ask_report.json'}", highlight=False)
    return out_dir / "ask_report.json"


def best_kind(report: dict) -> str:
    return max(report["kinds"], key=lambda k: (report["kinds"][k]["heldout_recall_at_1"],
                                               -(report["kinds"][k]["val_loss"] or 0)))


def _table(title: str) -> Table:
    """A borderless table that fits an 80-column terminal: one line per row, long labels cut with "…"."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                 title_justify="left")


def examples_table(report: dict, rows: int) -> Table:
    kind = best_kind(report)
    untrained = _labels(Path(report["descriptions"]["untrained"]))
    trained = _labels(Path(report["descriptions"][kind]))
    names = report["heldout"][:rows]
    table = _table(f"Held-out concepts (never trained on): untrained vs {kind}")
    table.add_column("concept", no_wrap=True, min_width=max(map(len, names), default=7))  # never cut a name
    table.add_column("untrained", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column(f"trained ({kind})", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("ok", no_wrap=True, min_width=3)
    for name in report["heldout"][:rows]:
        ok = trained[name].split(",")[0].strip() == name
        table.add_row(name, untrained[name], trained[name], "yes" if ok else "no")
    return table


def metrics_table(report: dict) -> Table:
    table = _table(f"Toy world, layer {report['layer']}, {len(report['heldout'])} held-out concepts, "
                   f"{report['seconds']:.0f} s")
    for col in ("adapter", "params", "held-out R@1", "attributes", "val loss"):
        table.add_column(col, justify="right" if col != "adapter" else "left", no_wrap=True)
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
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _labels(path: Path) -> dict[str, str]:
    return {r["id"]: r["label"] for r in read_jsonl(path, what="descriptions")}

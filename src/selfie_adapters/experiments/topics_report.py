"""What `selfie experiment topics` leaves behind besides report.json: a table, a PNG, example descriptions."""

from __future__ import annotations

from pathlib import Path

from ..errors import SelfieError
from ..evals.report import fmt
from ..files import save_figure as save_atomically

COLUMNS = ("layer", "method", "scale", "R@1", "R@10", "MRR", "val loss", "params", "seconds")


def table_rows(report: dict) -> list[list]:
    """One row per (layer, method): retrieval among the held-out titles."""
    rows = []
    for layer, result in report["layers"].items():
        for method, m in result.items():
            if method == "examples":
                continue
            rows.append([int(layer), method, m["scale"], m["recall@1"], m["recall@10"], m["mrr"],
                         m.get("val_loss"), m.get("num_parameters"), m.get("seconds")])
    return rows


def markdown(report: dict) -> str:
    """The table and the example descriptions as Markdown (README-ready)."""
    cfg = report["config"]
    lines = [f"# Topic experiment: {cfg['model']}", "",
             f"{report['train_topics']} training / {report['heldout_topics']} held-out topics; "
             f"{cfg['steps']} steps at batch {cfg['batch_size']}, lr {cfg['learning_rate']}; retrieval among the "
             f"{report['heldout_topics']} held-out titles (chance R@10 = "
             f"{10 / max(report['heldout_topics'], 1):.3f}); untrained = best of its scales.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table_rows(report)]
    for layer, result in report["layers"].items():
        methods = [m for m in result if m != "examples"]
        lines += ["", f"## Held-out examples, layer {layer}", "", "| topic | " + " | ".join(methods) + " |",
                  "|" + "---|" * (len(methods) + 1)]
        for ex in result["examples"]:
            cells = [ex["title"], *[ex.get(m, "") for m in methods]]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def save_figure(report: dict, path: str | Path) -> Path:
    """Held-out recall@10 per method (bars), one group per layer; chance as a dashed line."""
    try:
        import matplotlib
    except ImportError:
        raise SelfieError("figures need matplotlib; install it with: pip install 'selfie-adapters[eval]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    layers = list(report["layers"])
    methods = list(dict.fromkeys(m for r in report["layers"].values() for m in r if m != "examples"))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(layers) * len(methods) ** 0.5 + 3) + 2.0, 3.6))
    try:
        for j, method in enumerate(methods):
            values = [report["layers"][L].get(method, {}).get("recall@10", 0.0) for L in layers]
            ax.bar([i + j * width for i in range(len(layers))], values, width, label=method)
        ax.axhline(10 / max(report["heldout_topics"], 1), color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks([i + width * (len(methods) - 1) / 2 for i in range(len(layers))],
                      labels=[f"layer {L}" for L in layers])
        ax.set_ylabel("held-out recall@10")
        ax.set_title(f"{report['config']['model']}: naming held-out topics", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
        fig.tight_layout()
        path = Path(path)
        save_atomically(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path

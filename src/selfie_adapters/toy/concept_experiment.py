"""The toy-world SelfIE experiment: contrastive concept vectors → trained adapters → held-out labels.

Vectors are the residual stream after block ``layer`` at the last token of the chat prompt
``Tell me about X.``, minus the mean over all concepts. Concepts are split 80/20 (by concept, so
held-out concepts are never seen in training); each adapter kind is trained with the project's
trainer and describes the held-out concepts with the project's interpreter. The untrained
baseline is identity + normalisation at the best scale of a sweep (chosen on the held-out set,
which flatters the baseline).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters.artifact import load_adapter
from ..adapters.kinds import PROJECTIONS, trainable_kinds
from ..evals.nearest import nearest_neighbours
from ..interpret.describe import Interpreter
from ..training.data import write_labels_json
from ..vectors.hidden import contrastive, extract_hidden_states
from .lm import TOY_DIR, load_toy_model
from .world import Concept, label

DEFAULT_KINDS = trainable_kinds()
SCALE_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # baseline sweep, in units of the mean embedding norm


@dataclass
class ExperimentConfig:
    kinds: Sequence[str] = DEFAULT_KINDS
    seed: int = 0
    layer: int = 1
    steps: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-2
    rank: int = 16
    heldout_fraction: float = 0.2
    max_new_tokens: int = 16
    model_dir: Path = field(default_factory=lambda: TOY_DIR)


def score(generated: str, concept: Concept) -> tuple[bool, float]:
    """(names the right concept?, fraction of its attributes the label states)."""
    named = generated.split(",")[0].strip() == concept.name
    found = [re.search(rf"\b{re.escape(v)}\b", generated) is not None for v in concept.attributes.values()]
    return named, sum(found) / len(found)


def concept_vectors(model, tokenizer, concepts: Sequence[Concept], layer: int) -> torch.Tensor:
    """Contrastive vectors (N, d): last-token state of ``Tell me about X.`` minus the mean over concepts."""
    prompts = [f"Tell me about {c.name}." for c in concepts]
    states = extract_hidden_states(model, tokenizer, prompts, layer, chat=True, batch_size=128)[layer]
    return contrastive(states)


def split_concepts(n: int, heldout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = round(n * heldout_fraction)
    return sorted(order[k:]), sorted(order[:k])


def write_training_data(folder: Path, vectors: torch.Tensor, concepts: Sequence[Concept],
                        train: list[int], heldout: list[int]) -> Path:
    """The labels-JSON format of the trainer: held-out concepts form the validation split."""
    return write_labels_json(folder, vectors, {i: label(c) for i, c in enumerate(concepts)}, train, heldout,
                             dataset_name="toy-concepts", layer=None, source="selfie_adapters.toy",
                             vector_type="contrastive")


TrainProgress = Callable[[str, int, int, dict], None]  # (kind, step, total steps, info: loss, lr, steps_per_s)


def train_kind(kind: str, cfg: ExperimentConfig, labels_file: Path, runs: Path, model, tokenizer,
               init_scale: float, progress: TrainProgress | None = None, question_ratio: float | None = None):
    from ..training.config import config_from_dict
    from ..training.trainer import train

    raw = {
        "seed": cfg.seed, "experiment_name": kind,
        "model": {"name": model_name(cfg.model_dir), "dtype": "float32", "enable_gradient_checkpointing": False},
        "data": {"labels_file": str(labels_file), "batch_size": cfg.batch_size, "question_ratio": question_ratio},
        "projection": {"type": kind, "normalize_input": True, "init_scale": init_scale,
                       "low_rank_rank": cfg.rank if PROJECTIONS[kind].needs_rank else None},
        "training": {"learning_rate": cfg.learning_rate, "max_steps": cfg.steps, "warmup_steps": 10,
                     "validation_every_n_steps": max(cfg.steps // 4, 1), "checkpoint_every_n_steps": cfg.steps,
                     "checkpoint_dir": str(runs)},
        "logging": {"use_wandb": False, "log_sample_generations": 0},
    }
    report = None if progress is None else (lambda step, total, info: progress(kind, step, total, info))
    return train(config_from_dict(raw), model=model, tokenizer=tokenizer, progress=report)


def model_name(model_dir: Path) -> str:
    """What the adapters record as their model: the catalogue name ``toy`` for the shipped weights (a path
    inside one clone means nothing on another machine; ``--model toy`` loads them anywhere), else the folder."""
    return "toy" if Path(model_dir).resolve() == TOY_DIR else str(model_dir)


def run_experiment(cfg: ExperimentConfig, out_dir: Path, say: Callable[[str], None] = lambda s: None,
                   progress: TrainProgress | None = None) -> dict:
    """Run everything; returns the report (also written to ``out_dir/report.json``). ``say`` gets one line
    per stage; ``progress(kind, step, total, info)`` is called after every training step of each kind."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok, world = load_toy_model(cfg.model_dir)
    concepts = list(world.concepts)
    vectors = concept_vectors(model, tok, concepts, cfg.layer)
    train_idx, held = split_concepts(len(concepts), cfg.heldout_fraction, cfg.seed)
    labels_file = write_training_data(out_dir / "data", vectors, concepts, train_idx, held)
    emb_norm = model.get_input_embeddings().weight.norm(dim=-1).mean().item()
    held_vecs, held_concepts = vectors[held], [concepts[i] for i in held]
    say(f"{len(concepts)} concepts, {len(train_idx)} train / {len(held)} held out; layer {cfg.layer}")

    baseline = _baseline(model, tok, held_vecs, held_concepts, emb_norm, cfg)
    say(f"untrained baseline: recall@1 {baseline['heldout_recall_at_1']:.2f} at scale {baseline['scale']:.3g}")
    nearest = nearest_baseline(vectors, train_idx, held, concepts)
    say(f"nearest neighbour: recall@1 {nearest['heldout_recall_at_1']:.2f}, attributes "
        f"{nearest['attribute_accuracy']:.2f}")
    kinds: dict[str, dict] = {}
    descriptions: dict[str, list[str]] = {"untrained": baseline.pop("labels"), "nearest": nearest.pop("labels")}
    for kind in cfg.kinds:
        t = time.perf_counter()
        result = train_kind(kind, cfg, labels_file, out_dir / "runs", model, tok, emb_norm, progress)
        adapter = load_adapter(result.final_path)
        labels = [d.label for d in Interpreter(model, tok, adapter).describe(
            held_vecs, max_new_tokens=cfg.max_new_tokens, batch_size=128)]
        kinds[kind] = {**_metrics(labels, held_concepts), "val_loss": result.final_val_loss,
                       "best_val_loss": result.best_val_loss, "num_parameters": adapter.num_parameters(),
                       "seconds": round(time.perf_counter() - t, 1), "adapter": str(result.final_path)}
        descriptions[kind] = labels
        say(f"{kind}: recall@1 {kinds[kind]['heldout_recall_at_1']:.2f}, attributes "
            f"{kinds[kind]['attribute_accuracy']:.2f}, val loss {result.final_val_loss:.3f}")
    report = {"kinds": kinds, "baseline": baseline, "nearest": nearest,
              "seconds": round(time.perf_counter() - start, 1), "layer": cfg.layer, "seed": cfg.seed,
              "steps": cfg.steps, "num_concepts": len(concepts), "heldout": [c.name for c in held_concepts]}
    _write_outputs(out_dir, report, descriptions, held_concepts)
    return report


def _metrics(labels: list[str], concepts: Sequence[Concept]) -> dict:
    scores = [score(lab, c) for lab, c in zip(labels, concepts)]
    return {"heldout_recall_at_1": sum(s[0] for s in scores) / len(scores),
            "attribute_accuracy": sum(s[1] for s in scores) / len(scores)}


def nearest_baseline(vectors: torch.Tensor, train: Sequence[int], heldout: Sequence[int],
                     concepts: Sequence[Concept]) -> dict:
    """Each held-out concept labelled with its nearest training concept's label (cosine after centring on the
    training mean; no training). The label names another concept by construction (the split is by concept),
    so recall@1 is 0; attribute accuracy measures how much of the label the neighbour shares."""
    _, nbr = nearest_neighbours(vectors[list(heldout)], vectors[list(train)], mean=vectors[list(train)].mean(0))
    labels = [label(concepts[train[j]]) for j in nbr[:, 0].tolist()]
    return {**_metrics(labels, [concepts[i] for i in heldout]), "labels": labels}


def _baseline(model, tok, vecs, concepts, emb_norm: float, cfg: ExperimentConfig) -> dict:
    interp = Interpreter(model, tok)
    scales = [round(m * emb_norm, 4) for m in SCALE_MULTIPLES]
    found = interp.describe(vecs, scales=scales, max_new_tokens=cfg.max_new_tokens, batch_size=128)
    per_scale = {s: [d.label for d in found if d.scale == s] for s in scales}
    metrics = {s: _metrics(labels, concepts) for s, labels in per_scale.items()}
    best = max(scales, key=lambda s: (metrics[s]["heldout_recall_at_1"], metrics[s]["attribute_accuracy"]))
    return {**metrics[best], "scale": best, "labels": per_scale[best],
            "sweep": {str(s): m["heldout_recall_at_1"] for s, m in metrics.items()}}


def _write_outputs(out_dir: Path, report: dict, descriptions: dict[str, list[str]],
                   concepts: Sequence[Concept]) -> None:
    """report.json, one describe-style JSONL per kind and a topics file (for `selfie eval retrieval`)."""
    rows_dir = out_dir / "descriptions"
    rows_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "topics.jsonl", "w") as f:
        for c in concepts:
            f.write(json.dumps({"id": c.name, "title": label(c), "labels": [label(c)]}) + "\n")
    for kind, labels in descriptions.items():
        with open(rows_dir / f"{kind}.jsonl", "w") as f:
            for c, lab in zip(concepts, labels):
                f.write(json.dumps({"id": c.name, "label": lab}) + "\n")
    report["descriptions"] = {k: str(rows_dir / f"{k}.jsonl") for k in descriptions}
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))

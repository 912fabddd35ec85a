"""The round-trip score on a real model's named entities (run in an entities folder made by
scripts/entities_experiment.sh: labels.json, vectors.safetensors, states.safetensors, entities.json, heldout.json).

    python scripts/reconstructor_entities.py [--steps 1000] [--pooling mean]

1. `selfie train-reconstructor` on the training entities' labels ("{name}, a {category}").
2. On the held-out entities, for the trained reconstructor and the zero-training round trip: fve_nrm and cos of
   the true labels; AUC of score(own label) vs score(another entity's label); AUC of right-category labels
   (another entity of the same category) vs wrong-category labels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from selfie_adapters.cli import main
from selfie_adapters.models.loading import load_model
from selfie_adapters.reconstruct import Reconstructor, Scorer, auc, load_reconstructor

MODEL, LAYER = "smollm2-135m-instruct", 18


def metrics(scorer: Scorer, entities: list[dict], targets: torch.Tensor, field: str) -> dict:
    labels = [f"{e['name']}, a {e['category']}" for e in entities]
    own = scorer.score(labels, targets)
    n = len(entities)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    other = scorer.score([labels[j] for _, j in pairs], targets[[i for i, _ in pairs]])
    same = [s[field] for (i, j), s in zip(pairs, other) if entities[i]["category"] == entities[j]["category"]]
    diff = [s[field] for (i, j), s in zip(pairs, other) if entities[i]["category"] != entities[j]["category"]]
    fve = [s["fve_nrm"] for s in own if s["fve_nrm"] is not None]
    return {"fve_nrm": sum(fve) / len(fve) if fve else None, "cos": sum(s["cos"] for s in own) / n,
            "auc_own_vs_other": auc([s[field] for s in own], [s[field] for s in other]),
            "auc_right_vs_wrong_category": auc(same, diff), "score_field": field}


def run(a: argparse.Namespace) -> dict:
    cfg = {"model": {"name": MODEL}, "data": {"labels_file": "labels.json", "batch_size": 64},
           "training": {"max_steps": a.steps, "checkpoint_dir": "runs", "validation_every_n_steps": 100},
           "logging": {"use_wandb": False}, "reconstructor": {"pooling": a.pooling},
           "experiment_name": f"reconstructor-{a.pooling}"}
    Path("reconstructor.yaml").write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    assert main(["train-reconstructor", "reconstructor.yaml", "--overwrite"]) == 0
    train_s = time.perf_counter() - t
    rec = load_reconstructor(f"runs/reconstructor-{a.pooling}/final.safetensors")
    held = json.loads(Path("heldout.json").read_text())
    states = load_file("states.safetensors")[f"layer_{LAYER}"]
    targets = states[len(states) - len(held):] - states.mean(0)
    model, tok = load_model(MODEL)
    out = {"train_seconds": round(train_s, 1), "read_seconds": float(rec.metadata["read_seconds"]),
           "val_mse_nrm": float(rec.metadata["best_val_loss"])}
    for name, r in (("trained", rec), ("roundtrip", Reconstructor.roundtrip(states.mean(0), LAYER, targets))):
        t = time.perf_counter()
        out[name] = {field: metrics(Scorer(model, tok, r), held, targets, field) for field in ("cos", "centred_cos")}
        out[name]["seconds"] = round(time.perf_counter() - t, 1)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--pooling", default="mean")
    print(json.dumps(run(p.parse_args()), indent=1))

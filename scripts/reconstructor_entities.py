"""The round-trip score on a real model's named entities (run in an entities folder made by
scripts/entities_experiment.sh: labels.json, vectors.safetensors, states.safetensors, entities.json, heldout.json).

    python scripts/reconstructor_entities.py trust [--steps 1000] [--pooling mean]
    python scripts/reconstructor_entities.py bestof ROWS.jsonl GREEDY.jsonl   # rows of describe --best-of 16

1. `selfie train-reconstructor` on the training entities' labels ("{name}, a {category}").
2. On the held-out entities, for the trained reconstructor and the zero-training round trip: fve_nrm and cos of
   the true labels; AUC of score(own label) vs score(another entity's label); AUC of right-category labels
   (another entity of the same category) vs wrong-category labels.
3. `bestof`: describe rows with K samples per held-out entity, scored by a reconstructor: category accuracy
   (the label names the right category word and no other, or its name is an entity of the right category)
   and exact-name recall of greedy, a random sample, best-of-K by reconstruction for K = 1, 4, 16, and the
   best of the K picked with the truth.
"""

from __future__ import annotations

import argparse
import json
import re
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


WORDS = {"country": {"country", "countries", "nation", "kingdom", "republic"},
         "city": {"city", "cities", "town", "metropolis"},
         "language": {"language", "languages", "dialect", "tongue"}}


def right_category(label: str, entity: dict, kinds: dict[str, str]) -> bool:
    """The label names the entity's category word and no other, or its name part is a known entity of it."""
    found = {k for k, ws in WORDS.items() if set(re.findall(r"[a-z]+", label.lower())) & ws}
    if found:
        return found == {entity["category"]}
    return kinds.get(label.split(",")[0].strip().lower()) == entity["category"]


def bestof(rows_file: str, greedy_file: str) -> dict:
    held = json.loads(Path("heldout.json").read_text())
    kinds = {e["name"].lower(): e["category"] for e in json.loads(Path("entities.json").read_text())}
    rows = [json.loads(x) for x in Path(rows_file).read_text().splitlines()]
    greedy = {r["index"]: r["label"] for r in map(json.loads, Path(greedy_file).read_text().splitlines())}
    by: dict[int, list[dict]] = {}
    for r in rows:
        by.setdefault(r["index"], []).append(r)
    K = max(len(v) for v in by.values())

    def rate(pick) -> dict:
        labels = {i: pick(sorted(rs, key=lambda r: r["sample"])) for i, rs in by.items()}
        cat = [right_category(lab, held[i], kinds) for i, lab in labels.items()]
        name = [held[i]["name"].lower() in lab.lower() for i, lab in labels.items()]
        return {"category": round(sum(cat) / len(cat), 3), "name_recall": round(sum(name) / len(name), 3)}

    out = {"entities": len(by), "K": K, "greedy": rate(lambda rs: greedy[rs[0]["index"]]),
           "random_sample": rate(lambda rs: rs[0]["label"])}
    for k in sorted({1, 4, 16, K} & set(range(1, K + 1))):
        out[f"best_of_{k}"] = rate(lambda rs, k=k: min(rs[:k], key=lambda r: r["score"]["mse_nrm"])["label"])
    out[f"truth_best_of_{K}"] = {
        "category": round(sum(any(right_category(r["label"], held[i], kinds) for r in rs) for i, rs in by.items())
                          / len(by), 3),
        "name_recall": round(sum(any(held[i]["name"].lower() in r["label"].lower() for r in rs)
                                 for i, rs in by.items()) / len(by), 3)}
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trust")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--pooling", default="mean")
    b = sub.add_parser("bestof")
    b.add_argument("rows")
    b.add_argument("greedy")
    a = p.parse_args()
    print(json.dumps(run(a) if a.cmd == "trust" else bestof(a.rows, a.greedy), indent=1))

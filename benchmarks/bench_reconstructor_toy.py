"""Is the round-trip score trustworthy? The toy world (truth known), through the CLI's library paths.

1. `selfie train-reconstructor` on the toy concepts' training split (contrastive layer-1 vectors of
   `Tell me about X.`; every concept's true label); the zero-training round trip beside it.
2. Held-out concepts: fve_nrm of the true labels (target >= 0.7) and the AUC of score(own label) vs
   score(another held-out concept's label) (target >= 0.95), for cos and centred cos.
3. `selfie demo`'s adapters (every kind) + the untrained baseline describe the held-out vectors:
   greedy recall@1 vs best-of-8 by reconstruction (T = 1), and the best of the 8 picked with the truth
   (an upper bound); the untrained baseline's per-vector scale choice (`--best-of 1`, six scales) vs its
   best single scale. Target: best-of-8 >= greedy for every kind; per-vector scale > best single scale.
4. Cost: seconds generating vs scoring the same rows (target: scoring adds <= 30%), labels/s, scores/s.

Run: OMP_NUM_THREADS=1 python benchmarks/bench_reconstructor_toy.py [--out DIR] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from selfie_adapters.cli import main
from selfie_adapters.files import read_jsonl, save_tensors
from selfie_adapters.interpret.resumable import DescribeRun, describe_source
from selfie_adapters.reconstruct import Reconstructor, Scorer, auc, load_reconstructor
from selfie_adapters.reconstruct.choice import ReconstructorChoice
from selfie_adapters.reconstruct.score_file import ScoreRun, score_labels_file
from selfie_adapters.toy.concept_experiment import SCALE_MULTIPLES, ExperimentConfig, run_experiment, score
from selfie_adapters.toy.lm import load_toy_model
from selfie_adapters.toy.world import label
from selfie_adapters.vectors.hidden import extract_hidden_states
from selfie_adapters.vectors.source import VectorSource

LAYER, K = 1, 8


def prepare(out: Path, steps: int, seed: int) -> dict:
    """`selfie demo`'s experiment (adapters + split) and the raw states / mean file describe reads."""
    done = out / "demo" / "report.json"  # a rerun reuses the trained adapters
    report = (json.loads(done.read_text()) if done.is_file()
              else run_experiment(ExperimentConfig(seed=seed, layer=LAYER, steps=steps), out / "demo"))
    model, tok, world = load_toy_model()
    concepts = list(world.concepts)
    states = extract_hidden_states(model, tok, [f"Tell me about {c.name}." for c in concepts], LAYER, chat=True,
                                   batch_size=128)[LAYER]
    save_tensors({"states": states}, out / "states.safetensors")
    save_tensors({f"layer_{LAYER}": states.mean(0)}, out / "mean-vectors.safetensors")
    names = [c.name for c in concepts]
    held = [names.index(n) for n in report["heldout"]]
    return {"report": report, "model": model, "tok": tok, "concepts": concepts, "states": states, "held": held,
            "emb_norm": model.get_input_embeddings().weight.norm(dim=-1).mean().item()}


def train(out: Path, steps: int) -> tuple[Path, dict]:
    cfg = {"model": {"name": "toy", "dtype": "float32"},
           "data": {"labels_file": str(out / "demo" / "data" / "labels.json"), "batch_size": 64},
           "training": {"max_steps": steps, "checkpoint_dir": str(out / "runs"), "validation_every_n_steps": 100},
           "logging": {"use_wandb": False}, "reconstructor": {"layer": LAYER}, "experiment_name": "reconstructor"}
    (out / "reconstructor.yaml").write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    assert main(["train-reconstructor", str(out / "reconstructor.yaml"), "--overwrite"]) == 0
    path = out / "runs" / "reconstructor" / "final.safetensors"
    meta = load_reconstructor(path).metadata
    return path, {"seconds": round(time.perf_counter() - t, 2), "read_labels_s": float(meta["read_seconds"]),
                  "val_mse_nrm": float(meta["best_val_loss"])}


def trust(w: dict, rec: Reconstructor) -> dict:
    """fve_nrm of the true labels on held-out concepts; AUC own vs other (every other held-out label)."""
    held, concepts = w["held"], w["concepts"]
    targets = w["states"][held] - w["states"].mean(0)
    scorer = Scorer(w["model"], w["tok"], rec)
    labels = [label(concepts[i]) for i in held]
    own = scorer.score(labels, targets)
    n = len(held)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    other = scorer.score([labels[j] for _, j in pairs], targets[[i for i, _ in pairs]])
    return {"fve_nrm": sum(s["fve_nrm"] for s in own) / n, "cos": sum(s["cos"] for s in own) / n,
            "auc_cos": auc([s["cos"] for s in own], [s["cos"] for s in other]),
            "auc_centred_cos": auc([s["centred_cos"] for s in own], [s["centred_cos"] for s in other])}


def describe(w: dict, out: Path, rec: Path, adapter: str | None, **kw) -> tuple[list[dict], dict]:
    rates: dict = {}
    run = DescribeRun(model="toy", source=VectorSource.parse(f"{out / 'states.safetensors'}#states"),
                      features=w["held"], adapter=adapter, mean_vectors=out / "mean-vectors.safetensors",
                      layer=LAYER, max_new_tokens=16, batch_size=128,
                      reconstructor=ReconstructorChoice(str(rec)), **kw)
    name = f"{Path(adapter).parent.name if adapter else 'untrained'}-{kw.get('best_of', 'greedy')}"
    describe_source(run, out / "rows" / f"{name}.jsonl", overwrite=True, rates=rates)
    return read_jsonl(out / "rows" / f"{name}.jsonl"), rates


def recall(rows: list[dict], w: dict, pick) -> float:
    concepts = w["concepts"]
    by: dict[int, list[dict]] = {}
    for r in rows:
        by.setdefault(r["index"], []).append(r)
    return sum(pick(rs, concepts[i]) for i, rs in by.items()) / len(by)


def chosen_right(rows, c) -> bool:
    return any(r.get("best") and score(r["label"], c)[0] for r in rows)


def any_right(rows, c) -> bool:
    return any(score(r["label"], c)[0] for r in rows)


def rescore_roundtrip(out: Path, rows_file: Path, tag: str) -> list[dict]:
    """`selfie score` the same rows with the zero-training round trip (best marked by it)."""
    run = ScoreRun(model="toy", labels=rows_file, vectors=VectorSource.parse(f"{out / 'states.safetensors'}#states"),
                   reconstructor=ReconstructorChoice("roundtrip", mean_vectors=out / "mean-vectors.safetensors",
                                                     layer=LAYER))
    return score_labels_file(run, out / "rows" / f"{tag}.roundtrip.jsonl", overwrite=True)


def adapters_table(w: dict, out: Path, rec: Path) -> list[dict]:
    table = []
    for kind, m in w["report"]["kinds"].items():
        greedy, _ = describe(w, out, rec, m["adapter"])
        best, rates = describe(w, out, rec, m["adapter"], best_of=K, temperature=1.0)
        rt = rescore_roundtrip(out, out / "rows" / f"{kind}-{K}.jsonl", kind)
        table.append({"adapter": kind, "greedy": recall(greedy, w, any_right),
                      f"best_of_{K}": recall(best, w, chosen_right),
                      f"best_of_{K}_roundtrip": recall(rt, w, chosen_right),
                      f"any_of_{K}": recall(best, w, any_right), "generate_s": rates["generate_s"],
                      "score_s": rates["score_s"], "labels": rates["labels"]})
    return table


def attributes(rows: list[dict], w: dict, only_best: bool) -> float:
    """Mean attribute accuracy of the chosen rows (or of all rows)."""
    picked = [r for r in rows if r.get("best") or not only_best]
    return sum(score(r["label"], w["concepts"][r["index"]])[1] for r in picked) / len(picked)


def untrained_table(w: dict, out: Path, rec: Path) -> dict:
    """The untrained baseline at six scales: the best single scale vs a scale chosen per vector by the
    reconstructor (greedy, --best-of 1), and best-of-8 samples (T = 1) over all six scales."""
    scales = [round(m * w["emb_norm"], 4) for m in SCALE_MULTIPLES]
    rows, rates = describe(w, out, rec, None, scales=scales, best_of=1)
    per_scale = {s: {"recall": recall([r for r in rows if r["scale"] == s], w, any_right),
                     "attributes": attributes([r for r in rows if r["scale"] == s], w, False)} for s in scales}
    best_scale = max(per_scale, key=lambda s: (per_scale[s]["recall"], per_scale[s]["attributes"]))
    sampled, srates = describe(w, out, rec, None, scales=scales, best_of=K, temperature=1.0)
    return {"per_scale": per_scale, "best_scale": best_scale,
            "per_vector_scale": {"recall": recall(rows, w, chosen_right), "attributes": attributes(rows, w, True)},
            f"best_of_{K}x{len(scales)}": {"recall": recall(sampled, w, chosen_right),
                                           "attributes": attributes(sampled, w, True),
                                           "any_recall": recall(sampled, w, any_right)},
            "generate_s": rates["generate_s"] + srates["generate_s"], "score_s": rates["score_s"] + srates["score_s"],
            "labels": rates["labels"] + srates["labels"]}


def main_(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("bench-reconstructor-toy"))
    p.add_argument("--steps", type=int, default=200, help="adapter steps (selfie demo)")
    p.add_argument("--reconstructor-steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-adapters", action="store_true", help="only the untrained baseline's part of 3.")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    w = prepare(a.out, a.steps, a.seed)
    rec_path, training = train(a.out, a.reconstructor_steps)
    targets = w["states"][w["held"]] - w["states"].mean(0)
    result = {"training": training, "trained": trust(w, load_reconstructor(rec_path)),
              "roundtrip": trust(w, Reconstructor.roundtrip(w["states"].mean(0), LAYER, targets))}
    if not a.skip_adapters:
        result["describe"] = adapters_table(w, a.out, rec_path)
    result["untrained"] = untrained_table(w, a.out, rec_path)
    (a.out / ("result-untrained.json" if a.skip_adapters else "result.json")).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main_()

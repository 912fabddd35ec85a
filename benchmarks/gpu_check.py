"""GPU check (issue 24): labels/s of the reference's batch-32 ``generate`` and of our HF engine, side by side.

A Llama-3.1-8B-shaped model with random bf16 weights (``make_llama31_8b_random``, built on the GPU: no
download), the real Llama-3 tokenizer, random unit vectors × the embedding norm as soft tokens (the
untrained baseline), greedy, ``--max-new-tokens`` 30. Engines, in this order (each stops at its time
budget, so the whole check fits in 8 minutes on one H200; results are written after each engine):

  reference   HF ``generate(inputs_embeds=...)`` in batches of 32 (the reference implementation's way),
              on the first ``--reference-vectors`` (2048)
  hf-eager    our engine, static KV cache, no CUDA graphs, batch from free memory, on up to ``--vectors``
  hf          our engine as ``selfie describe`` runs it on a GPU: static cache + CUDA graphs
              (torch.compile "reduce-overhead"); its first batch (compile + capture) is timed apart

Greedy labels are compared with the reference's on the vectors both labelled (random weights in bf16:
near-uniform logits, so batch shape alone flips some argmaxes; the count is reported, not asserted).
The physical floor of one decode step is the weights read once (``weight bytes / --bandwidth``:
16.06 GB / 4.3 TB/s ≈ 3.7 ms on an H200); each engine's ms per decode step (its batch time / new
tokens, prefill included) is printed against it.

Needs only torch and transformers (+ the tokenizer wheel: see gpu_check.sh). ``--smoke``: a 2-block
toy config on the CPU, a few vectors, in seconds (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # bench_label_sae: the reference's generate, shared


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="Tiny config on CPU, a few vectors (seconds).")
    p.add_argument("--vectors", type=int, default=16384, help="Our engines' vectors (default 16384).")
    p.add_argument("--reference-vectors", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--budget-s", type=float, default=100.0, help="Time budget of each engine's timed run.")
    p.add_argument("--bandwidth", type=float, default=4.3e12, help="Memory bandwidth, bytes/s (H200: 4.3e12).")
    p.add_argument("--engines", default="reference,hf-eager,hf")
    p.add_argument("--out", default=None, help="Folder for gpu_check.json (default: $OUT, else benchmarks/out).")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.vectors, args.reference_vectors = min(args.vectors, 12), min(args.reference_vectors, 6)
        args.max_new_tokens = min(args.max_new_tokens, 4)
    args.device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    return args


def build(args):
    """(model, tokenizer): the 8B shape with random bf16 weights, or (--smoke) a 2-block fp32 toy."""
    from selfie_adapters.testing import make_llama3_tokenizer, make_llama31_8b_random, make_tiny_llama

    if args.smoke:
        return make_tiny_llama(layers=2, hidden=64).to(args.device), make_llama3_tokenizer()
    return make_llama31_8b_random(device=args.device), make_llama3_tokenizer()


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_reference(bench, vecs: torch.Tensor, args) -> dict:
    """Batches of 32 through HF ``generate`` until the vectors or the budget run out."""
    labels, t0 = [], time.perf_counter()
    soft = bench.interp.soft_tokens(vecs, bench.scale)
    for start in range(0, len(soft), 32):
        labels += bench.generate(soft[start:start + 32])
        if time.perf_counter() - t0 > args.budget_s:
            break
    sync(args.device)
    return {"batch": 32, "labels": labels, "seconds": time.perf_counter() - t0}


def run_ours(interp, bench, vecs: torch.Tensor, args) -> dict:
    """Our engine, batch from free memory: the first batch apart (allocation, compile, capture), then the
    rest until the vectors or the budget run out."""
    batch = interp.resolve_batch_size(args.max_new_tokens)
    kw = {"scales": [bench.scale], "max_new_tokens": args.max_new_tokens, "batch_size": batch}
    t0 = time.perf_counter()
    first = interp.describe(vecs[:batch], **kw)
    sync(args.device)
    warm = time.perf_counter() - t0
    labels, t1 = [d.label for d in first], time.perf_counter()
    timed = 0
    for start in range(batch, len(vecs), batch):
        labels += [d.label for d in interp.describe(vecs[start:start + batch], **kw)]
        timed += min(batch, len(vecs) - start)
        if time.perf_counter() - t1 > args.budget_s:
            break
    sync(args.device)
    seconds = time.perf_counter() - t1
    if timed == 0:  # one batch held every vector: its time (warm-up included) is all there is
        timed, seconds = len(first), warm
    return {"batch": batch, "labels": labels, "seconds": seconds, "timed_labels": timed, "first_batch_s": warm}


def report(name: str, r: dict, args, floor_s: float, reference: list[str] | None) -> dict:
    n = r.get("timed_labels", len(r["labels"]))
    rate = n / r["seconds"]
    batches = -(-n // r["batch"])
    step_ms = r["seconds"] / batches / args.max_new_tokens * 1e3
    row = {"engine": name, "batch": r["batch"], "labels": len(r["labels"]), "timed_labels": n,
           "seconds": round(r["seconds"], 3), "labels_per_s": round(rate, 2), "ms_per_step": round(step_ms, 3),
           "floor_ms_per_step": round(floor_s * 1e3, 3), "x_floor": round(step_ms / (floor_s * 1e3), 2),
           "floor_labels_per_s": round(r["batch"] / (args.max_new_tokens * floor_s), 1)}
    if "first_batch_s" in r:
        row["first_batch_s"] = round(r["first_batch_s"], 2)
    if reference is not None:
        overlap = min(len(reference), len(r["labels"]))
        row["labels_differing_from_reference"] = f"{sum(a != b for a, b in zip(reference, r['labels']))}/{overlap}"
    print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from bench_label_sae import Bench, bench_vectors

    from selfie_adapters import Interpreter

    out = Path(args.out or os.environ.get("OUT") or Path(__file__).parent / "out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tok = build(args)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    floor_s = weight_bytes / args.bandwidth
    bench = Bench(model, tok, None, None, args.max_new_tokens, 32)
    vecs = bench_vectors(model, max(args.vectors, args.reference_vectors), None, 0).to(args.device)
    info = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "weights_gb": round(weight_bytes / 1e9, 2), "built_s": round(time.perf_counter() - t0, 1),
            "max_new_tokens": args.max_new_tokens, "smoke": args.smoke, "rows": []}
    print(f"gpu_check: {info['device']}, torch {info['torch']}, transformers {info['transformers']}, "
          f"{info['weights_gb']} GB of weights (floor {floor_s * 1e3:.2f} ms/step at "
          f"{args.bandwidth / 1e12:.1f} TB/s), "
          f"built in {info['built_s']}s", flush=True)
    reference = None
    for name in [e.strip() for e in args.engines.split(",") if e.strip()]:
        if name == "reference":
            r = run_reference(bench, vecs[:args.reference_vectors], args)
        else:
            graphs = name == "hf" and args.device.startswith("cuda")
            interp = Interpreter(model, tok, fast_decode=True, cuda_graphs=graphs)
            r = run_ours(interp, bench, vecs[:args.vectors], args)
        info["rows"].append(report(name, r, args, floor_s, reference))
        if name == "reference":
            reference = r["labels"]
        (out / "gpu_check.json").write_text(json.dumps(info, indent=1))  # after each engine: a timeout keeps these
    print(f"wrote {out / 'gpu_check.json'}")
    return info


if __name__ == "__main__":
    main()

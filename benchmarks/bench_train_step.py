"""Training-step throughput and peak memory: the fast SelfIE loss vs a per-example reference loop.

Setup: a tiny random Llama (hidden 64, 4 layers) with the full Llama-3 vocabulary (128,256), the real
Llama-3 tokenizer, batch 80 of real labels from the Goodfire layer-19 labels file, random vectors,
a scalar-affine adapter, one AdamW step per batch.

* reference: for each example, build template + target separately, one full forward with logits
  at every position over the whole vocabulary, CE at the target positions; backward over the batch.
* ours: ``SelfieLoss`` (shared prefix KV cache, target positions only, chunked fused CE).

Memory: each method runs in its own fresh subprocess. Just before the first training step we reset
the kernel's peak-RSS mark (``/proc/self/clear_refs`` ← 5) and read the current RSS; afterwards we
report peak RSS (``VmHWM``) minus that. This counts everything torch allocates on CPU (tensors,
autograd buffers, allocator slack), which ``tracemalloc`` would not see, and is not hidden by the
setup's own peak. Without /proc it falls back to ``ru_maxrss`` growth (a lower bound).
Run: ``python benchmarks/bench_train_step.py [--steps 3]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from selfie_adapters.testing import make_llama3_tokenizer, make_tiny_llama

LABELS_FILE = Path(os.environ.get("SELFIE_LABELS",
                                  "/work/shared/data/goodfire-llama-3.1-8b-instruct-l19-labels.json.gz"))
BATCH, HIDDEN = 80, 64


def setup():
    from selfie_adapters.adapters.kinds import build_projection
    from selfie_adapters.training.data import tokenize_targets

    with gzip.open(LABELS_FILE, "rt") as f:
        entries = json.load(f)[0]["vectors"]
    labels = [e["labels"][0].strip() for e in entries[:BATCH]]
    tok = make_llama3_tokenizer()
    model = make_tiny_llama(layers=4, hidden=HIDDEN)
    torch.manual_seed(0)
    vectors = torch.randn(BATCH, HIDDEN)
    proj = build_projection("scalar_affine", HIDDEN, init_scale=5.0)
    targets, lengths = tokenize_targets(tok, labels, "<|eot_id|>")
    return tok, model, vectors, proj, labels, targets, lengths


def reference_loss(model, tok, soft, labels):
    from selfie_adapters.interpret.template import PromptTemplate

    ids, sites = PromptTemplate().encode(tok)
    losses = []
    for b, label in enumerate(labels):
        target = tok(f'{label}"<|eot_id|>', add_special_tokens=False)["input_ids"]
        seq = torch.tensor(ids + target)
        emb = model.get_input_embeddings()(seq).clone()
        emb[sites] = soft[b]
        logits = model(inputs_embeds=emb[None]).logits[0].float()  # (T, V): every position
        losses.append(F.cross_entropy(logits[len(ids) - 1:-1], torch.tensor(target)).clamp(max=100.0))
    return torch.stack(losses).mean()


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss_kib() -> int:
    """Reset the peak-RSS mark; return the current RSS (KiB)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS") or 0
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kib() -> int:
    return _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run(method: str, steps: int) -> dict:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    tok, model, vectors, proj, labels, targets, lengths = setup()
    from selfie_adapters.training.loss import SelfieLoss

    fast = SelfieLoss(model, tok, max_loss=100.0)
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-2)

    def step() -> float:
        opt.zero_grad()
        soft = proj(vectors)
        if method == "reference":
            loss = reference_loss(model, tok, soft, labels)
        else:
            loss = fast(soft, targets, lengths).mean()
        loss.backward()
        opt.step()
        return loss.item()

    rss0 = _reset_peak_rss_kib()
    first = step()  # warm-up (also builds the prefix cache)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    peak = _peak_rss_kib() - rss0
    return {"method": method, "steps_per_s": steps / dt, "peak_mib": peak / 1024, "first_loss": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--method", choices=["reference", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        print(json.dumps(run(args.method, args.steps)))
        return
    res = {}
    for method in ("reference", "ours"):
        out = subprocess.run([sys.executable, __file__, "--method", method, "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout
        res[method] = json.loads(out.strip().splitlines()[-1])
    r, o = res["reference"], res["ours"]
    print(f"tiny Llama (d={HIDDEN}, 4 layers, vocab 128256), batch {BATCH} Goodfire labels, "
          f"{torch.get_num_threads()} threads, {args.steps} timed steps")
    print(f"{'':22}{'reference':>12}{'ours':>12}{'ratio':>10}")
    speed, mem = o["steps_per_s"] / r["steps_per_s"], o["peak_mib"] / r["peak_mib"]
    print(f"{'steps/s':22}{r['steps_per_s']:12.3f}{o['steps_per_s']:12.3f}{speed:9.2f}x")
    print(f"{'peak RSS growth (MiB)':22}{r['peak_mib']:12.0f}{o['peak_mib']:12.0f}{mem:9.2f}x")
    print(f"{'loss (first step)':22}{r['first_loss']:12.5f}{o['first_loss']:12.5f}")


if __name__ == "__main__":
    main()

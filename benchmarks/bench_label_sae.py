"""Labelling a whole SAE: labels/s of the reference's ways and ours, side by side in one run.

Engines, all on the same vectors with the same soft tokens (untrained baseline: s · x̂, s = the model's
mean input-embedding norm; or --adapter), greedy, one label per vector, <= --max-new-tokens:

  loop     the reference-style loop: one HF ``generate(inputs_embeds=...)`` per vector (batch 1)
  batched  the reference's batched ``generate``: --batch-size rows of left-padded inputs_embeds with the
           soft token at the injection sites, stopping at end-of-turn
  hf       ours: ``write_descriptions`` (the path of ``selfie describe``) with the HF ``Interpreter``
           (shared-prefix KV cache, rows leave the batch when done), JSONL rows written
  vllm     ours with ``engines.vllm.VllmEngine`` where vLLM is importable (else skipped with a note)

Labels are cut the same way for all (special tokens dropped, text before the last quote); the table
counts rows whose greedy label differs from ``hf``'s. Targets (reported, not asserted), CPU SmolLM2,
512 vectors: hf >= 3x loop and >= 1.3x batched.

Vectors: random unit vectors × the embedding norm, or SAE decoder rows (--sae sae-lens:R/ID or a local
SAE file). Models: catalogue names (``toy``, ``smollm2-135m-instruct``, ``llama-3.1-8b-instruct``), a
folder / hub id, or ``llama-3.1-8b-random`` (Llama-3.1-8B's exact config, random bf16 weights, the real
Llama-3 tokenizer: ``selfie_adapters.testing.make_llama31_8b_random``).

Run (CPU):  OMP_NUM_THREADS=2 python benchmarks/bench_label_sae.py --model toy --model smollm2-135m-instruct
Quick:      python benchmarks/bench_label_sae.py --model toy --vectors 64
GPU:        python benchmarks/bench_label_sae.py --model llama-3.1-8b-random --device cuda --vectors 2048
            [--vllm-model FOLDER]   (vLLM needs a safetensors folder; a random model is saved for it)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ENGINES = ("loop", "batched", "hf", "vllm")
RANDOM_8B = "llama-3.1-8b-random"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="Model(s) to run (repeatable; default: toy and "
                   "smollm2-135m-instruct).")
    p.add_argument("--vectors", type=int, default=512, help="Vectors to label (default 512).")
    p.add_argument("--loop-vectors", type=int, default=None, help="Time the batch-1 loop on the first N vectors "
                   "only (its labels/s is still per label; default: all).")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engine", action="append", choices=ENGINES, help="Engines to run (default: all).")
    p.add_argument("--repeats", type=int, default=1, help="Timed runs per engine; the median is reported.")
    p.add_argument("--sae", default=None, help="Describe SAE decoder rows (sae-lens:R/ID or a local SAE file).")
    p.add_argument("--adapter", default=None, help="Adapter file (default: the untrained baseline).")
    p.add_argument("--scale", type=float, default=None, help="Soft-token scale (default: embedding norm "
                   "without an adapter, 1 with one).")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or 2).")
    p.add_argument("--vllm-model", default=None, help="safetensors folder for vLLM (default: the model's own "
                   "folder; GGUF catalogue models need `selfie models export` first).")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def load(name: str, dtype: str, device: str | None):
    """(model, tokenizer) for a catalogue name / folder, or the random-weights Llama-3.1-8B."""
    if name == RANDOM_8B:
        from selfie_adapters.testing import make_llama3_tokenizer, make_llama31_8b_random

        return make_llama31_8b_random(device=device or "cpu"), make_llama3_tokenizer()
    from selfie_adapters.models.loading import load_model

    return load_model(name, dtype=dtype, device=device)


def bench_vectors(model, n: int, sae: str | None, seed: int) -> torch.Tensor:
    """(n, d) fp32: SAE decoder rows (non-zero, first n), or random unit vectors × the embedding norm."""
    if sae:
        from selfie_adapters.vectors.rows import drop_zero_rows
        from selfie_adapters.vectors.source import VectorSource

        rows, idx = VectorSource.parse(sae).load()
        return drop_zero_rows(rows, idx, "dead latent")[0][:n]
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, model.config.hidden_size, generator=g)
    return v / v.norm(dim=-1, keepdim=True) * embedding_norm(model)


def embedding_norm(model) -> float:
    """The mean norm of the input-embedding rows (what a soft token of the untrained baseline should have)."""
    return model.get_input_embeddings().weight.float().norm(dim=-1).mean().item()


class Bench:
    """The interpreter's prompt, soft tokens and label cut, shared by every engine so they label alike."""

    def __init__(self, model, tok, adapter, scale: float | None, max_new_tokens: int, batch_size: int) -> None:
        from selfie_adapters import Interpreter

        self.model, self.tok = model, tok
        self.interp = Interpreter(model, tok, adapter, label_end="last-quote")  # the reference, as `generate`
        self.scale = scale if scale is not None else (1.0 if adapter else round(embedding_norm(model), 3))
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.eos = sorted(self.interp.eos_ids)  # the reference stops at end-of-turn (and the token limit)
        from selfie_adapters.models.tokens import pad_token_id

        self.pad = pad_token_id(tok)

    def label(self, new_tokens: list[int]) -> str:
        from selfie_adapters.interpret.label_text import extract_label

        text = self.tok.decode([t for t in new_tokens if t not in self.eos], skip_special_tokens=True)
        return extract_label(text, self.interp.template.closing, "last-quote")

    @torch.inference_mode()
    def generate(self, soft: torch.Tensor) -> list[str]:
        """HF ``generate`` on left-padded inputs_embeds (all rows share the template: no padding needed,
        the mask is all ones) with the soft tokens (b, d) at the sites; greedy, stop at end-of-turn."""
        from selfie_adapters.interpret.inject import embed_with_soft_tokens
        from selfie_adapters.models.tree import model_device

        device = model_device(self.model)
        ids = torch.tensor([self.interp.prompt_ids] * len(soft), device=device)  # (b, T)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, self.interp.sites] = True
        emb = embed_with_soft_tokens(self.model, ids, mask, soft.to(device))  # (b, T, d)
        out = self.model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=self.eos,
                                  pad_token_id=self.pad, temperature=None, top_p=None, top_k=None)
        return [self.label(row.tolist()) for row in out]  # with inputs_embeds, generate returns new tokens only

    def loop(self, vecs: torch.Tensor) -> list[str]:
        soft = self.interp.soft_tokens(vecs, self.scale)
        return [lab for i in range(len(soft)) for lab in self.generate(soft[i:i + 1])]

    def batched(self, vecs: torch.Tensor) -> list[str]:
        soft = self.interp.soft_tokens(vecs, self.scale)
        return [lab for s in range(0, len(soft), self.batch_size) for lab in self.generate(soft[s:s + self.batch_size])]

    def ours(self, engine, vecs: torch.Tensor) -> list[str]:
        """``write_descriptions`` into a fresh JSONL (what `selfie describe` runs), labels in row order."""
        from selfie_adapters.interpret.resumable import KEY_FIELDS, write_descriptions
        from selfie_adapters.runs.row_log import JsonlLog

        with (tempfile.TemporaryDirectory() as d,
              JsonlLog(Path(d) / "labels.jsonl", {"bench": 1}, command="describe", key_fields=KEY_FIELDS) as log):
            rows = write_descriptions(log, engine, vecs, list(range(len(vecs))), scales=[self.scale],
                                      max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return [r["label"] for r in sorted(rows, key=lambda r: r["index"])]


def timed_round_robin(runs: dict[str, Callable[[], list[str]]], repeats: int) -> dict[str, tuple[float, list[str]]]:
    """{engine: (median seconds, labels of its last run)}; the engines take turns each repeat, so a load
    change on a busy machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    labels: dict[str, list[str]] = {}
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            labels[name] = fn()
            times[name].append(time.perf_counter() - t)
            print(f"  {name:8s} {len(labels[name]):5d} labels in {times[name][-1]:8.2f}s: "
                  f"{len(labels[name]) / times[name][-1]:8.2f} labels/s", flush=True)
    return {name: (statistics.median(times[name]), labels[name]) for name in runs}


def vllm_engine(args, name: str, model, tok, adapter):
    """A VllmEngine, or (None, why) when vLLM or the engine is missing."""
    try:
        import vllm  # noqa: F401

        from selfie_adapters.engines.vllm import VllmEngine
    except ImportError as e:
        return None, f"vllm skipped: {e} (install with `make setup-vllm`; run this script in that venv)"
    folder = args.vllm_model
    if folder is None and name == RANDOM_8B:  # vLLM loads from disk: save the random model once
        folder = str(Path(tempfile.gettempdir()) / "selfie-bench-llama31-8b-random")
        if not Path(folder, "config.json").is_file():
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
    folder = folder or name
    try:
        return VllmEngine(folder, adapter, dtype=args.dtype, label_end="last-quote"), None
    except Exception as e:  # a GGUF model, a missing folder: say so, keep the other rows
        return None, f"vllm skipped: {type(e).__name__}: {e}"


def bench_model(args, name: str) -> list[list]:
    from selfie_adapters.adapters.artifact import load_adapter

    t0 = time.perf_counter()
    model, tok = load(name, args.dtype, args.device)
    adapter = load_adapter(args.adapter) if args.adapter else None
    bench = Bench(model, tok, adapter, args.scale, args.max_new_tokens, args.batch_size)
    vecs = bench_vectors(model, args.vectors, args.sae, args.seed)
    n_loop = min(args.loop_vectors or len(vecs), len(vecs))
    print(f"\n{name}: d={model.config.hidden_size}, {model.config.num_hidden_layers} blocks, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {next(model.parameters()).dtype}, "
          f"loaded in {time.perf_counter() - t0:.1f}s; {len(vecs)} vectors, scale {bench.scale:g}, greedy, "
          f"<= {args.max_new_tokens} new tokens, batch {args.batch_size}", flush=True)
    engines = args.engine or list(ENGINES)
    bench.ours(bench.interp, vecs[:2])  # warm-up: first-call allocations for every engine alike
    runs = {"hf": lambda: bench.ours(bench.interp, vecs), "batched": lambda: bench.batched(vecs),
            "loop": lambda: bench.loop(vecs[:n_loop])}
    if "vllm" in engines:
        engine, why = vllm_engine(args, name, model, tok, adapter)
        if engine is None:
            print(f"  {why}")
        else:
            bench.ours(engine, vecs[:2])  # warm-up: starts the vLLM engine
            runs["vllm"] = lambda: bench.ours(engine, vecs)
    timed = timed_round_robin({k: fn for k, fn in runs.items() if k in engines}, args.repeats)
    results = {k: (seconds, len(labels), labels) for k, (seconds, labels) in timed.items()}
    return table_rows(name, results)


def table_rows(name: str, results: dict[str, tuple[float, int, list[str]]]) -> list[list]:
    """[model, engine, labels, seconds, labels/s, hf speed-up over it, labels differing from hf]."""
    ours = results.get("hf")
    rows = []
    for engine in ENGINES:
        if engine not in results:
            continue
        seconds, n, labels = results[engine]
        rate = n / seconds
        speedup = f"{ours[1] / ours[0] / rate:.2f}x" if ours and engine != "hf" else "-"
        differ = sum(a != b for a, b in zip(labels, ours[2])) if ours else "-"
        rows.append([name, engine, n, f"{seconds:.2f}", f"{rate:.2f}", speedup, f"{differ}/{min(n, ours[1])}"
                     if ours else "-"])
    return rows


def print_table(rows: list[list]) -> None:
    head = ["model", "engine", "labels", "seconds", "labels/s", "hf speed-up", "labels != hf"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS", 2)))
    rows = []
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for name in args.model or ["toy", "smollm2-135m-instruct"]:
        rows += bench_model(args, name)
    print(f"\nlabels/s, median of {args.repeats} run(s); torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {load_avg:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end; targets (CPU SmolLM2, 512 vectors): hf >= 3x loop, "
          ">= 1.3x batched")
    print_table(rows)


if __name__ == "__main__":  # vLLM's engine runs in spawned processes: keep the guard
    main()

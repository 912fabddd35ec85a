"""Probing vs describing: vectors per second of `selfie ask --choices` and of `selfie describe`, one run.

Both on the same vectors, soft tokens and batch size (untrained baseline: s · x̂ with s = the model's mean
input-embedding norm, or --adapter):

  describe   ``Interpreter.describe``: greedy, <= --max-new-tokens, one label per vector (the describe path)
  choices    ``Interpreter.ask(..., choices=...)``: the teacher-forced log-probability of each choice after
             the question prompt (one prompt pass per batch; a second small forward only for choices of
             several tokens), one probe per vector
  free       ``Interpreter.ask`` without choices: a free answer to the question (generation, as describe)

Target (reported, not asserted): choices >= 5x describe per vector on the same machine.

Run (CPU):  OMP_NUM_THREADS=1 python benchmarks/bench_ask.py --model toy --model smollm2-135m-instruct
Quick:      python benchmarks/bench_ask.py --model toy --vectors 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

QUESTIONS = {"toy": ("What colour is {vector}?", [" red", " blue", " green", " black", " white", " yellow",
                                                  " purple", " grey"], "{vector} is")}
DEFAULT_QUESTION = ("Is {vector} a city? Answer yes or no.", ["Yes", "No"], "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="Model(s) (repeatable; default: toy).")
    p.add_argument("--vectors", type=int, default=256, help="Vectors to probe (default 256).")
    p.add_argument("--max-new-tokens", type=int, default=30, help="Describe's (and free answers') token limit.")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="Timed runs per way; the median is reported.")
    p.add_argument("--adapter", default=None, help="Adapter file (default: the untrained baseline).")
    p.add_argument("--no-free", action="store_true", help="Skip the free-answer row.")
    return p.parse_args(argv)


def timed(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_model(name: str, args: argparse.Namespace) -> list[tuple[str, float]]:
    from selfie_adapters import Interpreter, load_adapter
    from selfie_adapters.models.loading import load_model
    from selfie_adapters.models.tree import embedding_norm

    model, tok = load_model(name)
    adapter = load_adapter(args.adapter) if args.adapter else None
    interp = Interpreter(model, tok, adapter, allow_model_mismatch=True)
    scale = 1.0 if adapter is not None else round(embedding_norm(model), 4)
    torch.manual_seed(0)
    vectors = torch.randn(args.vectors, model.config.hidden_size)
    question, choices, prefix = QUESTIONS.get(name, DEFAULT_QUESTION)
    common = {"scales": [scale], "batch_size": args.batch_size}
    ways = {
        "describe": lambda: interp.describe(vectors, max_new_tokens=args.max_new_tokens, **common),
        "choices": lambda: interp.ask(vectors, question, choices=choices, answer_prefix=prefix, **common),
    }
    if not args.no_free:
        ways["free"] = lambda: interp.ask(vectors, question, max_new_tokens=args.max_new_tokens, **common)
    ways["choices"]()  # warm-up (first-call allocations)
    return [(way, len(vectors) / timed(fn, args.repeats)) for way, fn in ways.items()]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"threads {torch.get_num_threads()}, {args.vectors} vectors, batch {args.batch_size}, "
          f"max_new_tokens {args.max_new_tokens}, median of {args.repeats}")
    print(f"{'model':<24} {'way':<9} {'vectors/s':>10} {'vs describe':>12}")
    for name in args.model or ["toy"]:
        rows = bench_model(name, args)
        base = dict(rows)["describe"]
        for way, rate in rows:
            print(f"{name:<24} {way:<9} {rate:>10.1f} {rate / base:>11.1f}x")


if __name__ == "__main__":
    main()

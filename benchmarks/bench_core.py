"""Core speed targets, baseline and ours side by side in one run (CPU, 2 threads).

1. extract: our early-stopping extraction vs a full forward with output_hidden_states=True
   (tiny Llama with 24 blocks, layer 19). Target: >= 1.5x.
2. describe: Interpreter (shared prefix, rows leave when done) vs a plain batched
   ``generate(inputs_embeds=...)`` with the same stop ids, batch 32, 30 new tokens, at equal
   outputs. Target: >= 1.5x. Uses the toy model (whose descriptions really close the quote)
   when it is there, else a random tiny Llama.

Run: python benchmarks/bench_core.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
torch.set_num_threads(2)


def best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_extract() -> None:
    from conftest import make_llama3_tokenizer, make_tiny_llama

    from selfie_adapters import extract_hidden_states
    from selfie_adapters.vectors import render_prompts

    model = make_tiny_llama(layers=24, hidden=256, vocab=128256)
    tok = make_llama3_tokenizer()
    prompts = [f"Tell me about topic number {i}, and why it matters so much to people." for i in range(64)]
    encoded = render_prompts(tok, prompts, chat=True)

    def baseline():
        with torch.inference_mode():
            for start in range(0, len(encoded), 16):
                batch = torch.tensor(encoded[start:start + 16])  # equal lengths: no padding needed
                model(input_ids=batch, output_hidden_states=True).hidden_states[20][:, -1].float()

    def ours():
        extract_hidden_states(model, tok, prompts, 19, chat=True, batch_size=16)

    b, o = best_of(baseline), best_of(ours)
    print(f"extract  24 blocks, L=19, 64 prompts: full forward {b:.3f}s | ours {o:.3f}s | speed-up {b / o:.2f}x "
          f"(target >= 1.5x)")


def describe_setup():
    try:
        from selfie_adapters.toy import load_toy_model

        model, tok, world = load_toy_model()
        from selfie_adapters.vectors import extract_hidden_states

        names = [c.name for c in world.concepts[:32]]
        vecs = extract_hidden_states(model, tok, [f"Tell me about {n}." for n in names], 1, chat=True)[1]
        vecs = vecs - vecs.mean(0)
        return "toy model", model, tok, vecs, None
    except Exception as e:  # noqa: BLE001 - fall back to a random model
        from conftest import make_llama3_tokenizer, make_tiny_llama

        print(f"(toy model unavailable: {type(e).__name__}; using a random tiny Llama)")
        return "random tiny Llama", make_tiny_llama(layers=4, hidden=128), make_llama3_tokenizer(), \
            torch.randn(32, 128), 8.0


def bench_describe() -> None:
    from selfie_adapters import Interpreter
    from selfie_adapters.inject import embed_with_soft_tokens

    name, model, tok, vecs, scale = describe_setup()
    interp = Interpreter(model, tok)
    scale = scale or 1.0
    soft = interp.soft_tokens(vecs, scale)
    ids = torch.tensor([interp.prompt_ids] * len(vecs))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, interp.sites] = True
    out_ours: list = []
    out_base: list = []

    def baseline():
        with torch.inference_mode():
            emb = embed_with_soft_tokens(model, ids, mask, soft)
            gen = model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                 do_sample=False, eos_token_id=list(interp.stop_ids), pad_token_id=0)
        out_base[:] = [_cut(g.tolist(), interp.stop_ids, interp.eos_ids) for g in gen]

    def ours():
        out_ours[:] = [d.text for d in interp.describe(vecs, scales=[scale], max_new_tokens=30, batch_size=32)]

    b, o = best_of(baseline), best_of(ours)
    same = [tok.decode(t) for t in out_base] == out_ours
    print(f"describe {name}, batch 32, 30 new tokens: generate {b:.3f}s | ours {o:.3f}s | "
          f"speed-up {b / o:.2f}x (target >= 1.5x); equal outputs: {same}")


def _cut(tokens: list[int], stop: list[int], eos: set[int]) -> list[int]:
    """generate's row up to and including the first stop id, without end-of-turn ids (as ours)."""
    out = []
    for t in tokens:
        out.append(t)
        if t in stop:
            break
    return [t for t in out if t not in eos]


if __name__ == "__main__":
    bench_extract()
    bench_describe()

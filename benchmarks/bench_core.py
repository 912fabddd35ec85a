"""Core speed targets, baseline and ours side by side in one run (CPU, 2 threads).

1. extract: our early-stopping extraction vs a full forward with output_hidden_states=True
   (tiny Llama with 24 blocks, layer 19). Target: >= 1.5x.
2. describe: Interpreter (shared prefix, rows leave when done) vs a plain batched
   ``generate(inputs_embeds=...)`` (stopping at EOS, then cut at the quote), and vs generate told to
   stop at every quote token too; batch 32, up to 30 new tokens, greedy, equal outputs checked.
   Target: >= 1.5x. On the toy model (descriptions close the quote at different lengths) and on a
   random Llama with the full 128k vocabulary (never closes it).

Run: python benchmarks/bench_core.py
"""

from __future__ import annotations

import time

import torch

from selfie_adapters.testing import make_llama3_tokenizer, make_tiny_llama

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
    from selfie_adapters import extract_hidden_states
    from selfie_adapters.vectors.prompts import render_prompts

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


def describe_setups():
    """(name, model, tokenizer, vectors, scale): the toy model (real descriptions that close the
    quote at different lengths) and a random Llama with the full 128k vocabulary (never closes)."""
    from selfie_adapters.toy import load_toy_model
    from selfie_adapters.vectors.hidden import extract_hidden_states

    model, tok, world = load_toy_model()
    names = [c.name for c in world.concepts[:32]]
    vecs = extract_hidden_states(model, tok, [f"Tell me about {n}." for n in names], 1, chat=True)[1]
    yield "toy model (d=128, 4 blocks)", model, tok, vecs - vecs.mean(0), 1.0
    torch.manual_seed(0)
    yield ("random Llama (d=256, 8 blocks, 128k vocab)", make_tiny_llama(layers=8, hidden=256),
           make_llama3_tokenizer(), torch.randn(32, 256), 8.0)


def bench_describe() -> None:
    for setup in describe_setups():
        bench_describe_one(*setup)


def bench_describe_one(name: str, model, tok, vecs: torch.Tensor, scale: float) -> None:
    from selfie_adapters import Interpreter
    from selfie_adapters.interpret.inject import embed_with_soft_tokens

    interp = Interpreter(model, tok, label_end="last-quote")  # rows run to end-of-turn (the reference)
    quick = Interpreter(model, tok, label_end="first-quote")  # rows stop at the first quote token
    soft = interp.soft_tokens(vecs, scale)
    ids = torch.tensor([interp.prompt_ids] * len(vecs))
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, interp.sites] = True
    results: dict[str, list] = {}

    def baseline(stop: list[int], key: str):
        with torch.inference_mode():
            emb = embed_with_soft_tokens(model, ids, mask, soft)
            gen = model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids), max_new_tokens=30,
                                 do_sample=False, eos_token_id=stop, pad_token_id=0)
        results[key] = [tok.decode(_cut(g.tolist(), stop, interp.eos_ids)) for g in gen]

    def ours(it, key: str):
        results[key] = [d.text for d in it.describe(vecs, scales=[scale], max_new_tokens=30, batch_size=32)]

    plain = best_of(lambda: baseline(sorted(interp.eos_ids), "plain"))
    stops = best_of(lambda: baseline(quick.stop_ids, "stops"))
    o = best_of(lambda: ours(interp, "ours"))
    q = best_of(lambda: ours(quick, "quick"))
    same = results["plain"] == results["ours"] and results["stops"] == results["quick"]
    print(f"describe {name}, batch 32, <= 30 new tokens: generate to end-of-turn {plain:.3f}s | ours "
          f"(last-quote) {o:.3f}s | speed-up {plain / o:.2f}x (target >= 1.5x); generate stopping at the quote "
          f"{stops:.3f}s | ours (first-quote) {q:.3f}s | {stops / q:.2f}x; equal outputs: {same}")


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

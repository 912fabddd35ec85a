"""Generation scoring: conversations/s of our one-run scorer vs generate + separate forward + full SAE encode.

Ours: sample the conversation and read the target latent on the fly from a hook on block L
(one encoder column per row). Baseline: ``model.generate``, then a full forward with
``output_hidden_states=True`` over the generated sequences and a full SAE encode (all latents).

    python benchmarks/bench_generation_scoring.py [--d-sae 65536] [--convs 32] [--batch 8] [--tokens 48]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_llama3_tokenizer, make_tiny_llama  # noqa: E402

from selfie_adapters.evals.generation import (  # noqa: E402
    DEFAULT_PROMPT,
    generate_and_score,
    render_chat,
    special_token_ids,
)
from selfie_adapters.evals.sae_probe import SimpleSAE, latent_probe  # noqa: E402
from selfie_adapters.modeling import eos_token_ids  # noqa: E402


def prompts_for(tok, labels):
    return [render_chat(tok, [{"role": "user", "content": DEFAULT_PROMPT.replace("{label}", x)}],
                        generation_prompt=True)[1] for x in labels]


def left_pad(prompts, pad):
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad)
    attn = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], attn[b, T - len(p):] = torch.tensor(p), 1
    return ids, attn


@torch.inference_mode()
def baseline(model, tok, sae, layer, prompts, latents, tokens, non_content):
    ids, attn = left_pad(prompts, tok.pad_token_id)
    seqs = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=1.0,
                          max_new_tokens=tokens, pad_token_id=tok.pad_token_id)
    full_attn = torch.cat([attn, torch.ones(len(seqs), seqs.shape[1] - ids.shape[1], dtype=attn.dtype)], 1)
    out = model(input_ids=seqs, attention_mask=full_attn, output_hidden_states=True)
    acts = sae.encode(out.hidden_states[layer + 1])  # (B, T, d_sae): every latent
    gen = seqs[:, ids.shape[1]:]
    content = ~torch.isin(gen, torch.tensor(sorted(non_content)))
    a = acts[:, ids.shape[1]:, :].gather(-1, torch.tensor(latents)[:, None, None].expand(-1, gen.shape[1], 1))[..., 0]
    return ((a > 0) & content).any(1)


@torch.inference_mode()
def ours(model, tok, sae, layer, prompts, latents, tokens, non_content, stop):
    probe = latent_probe(sae, latents)
    res = generate_and_score(model, prompts, probe, layer, max_new_tokens=tokens, temperature=1.0,
                             stop_ids=stop, non_content=non_content, pad_id=tok.pad_token_id)
    return torch.tensor([r.hit for r in res])


def timed(fn, jobs, batch):
    t0 = time.perf_counter()
    for s in range(0, len(jobs), batch):
        fn(jobs[s:s + batch])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-sae", type=int, default=65536)
    ap.add_argument("--convs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = make_tiny_llama(), make_llama3_tokenizer()
    d = model.config.hidden_size
    sae = SimpleSAE(torch.randn(d, args.d_sae) / d ** 0.5, torch.zeros(args.d_sae) - 0.5, torch.zeros(d))
    labels = [f"label number {i} about fruit" for i in range(args.convs)]
    jobs = list(zip(prompts_for(tok, labels), [i * 997 % args.d_sae for i in range(args.convs)]))
    non_content, stop = special_token_ids(tok, model), eos_token_ids(tok, model)

    def run_base(chunk):
        return baseline(model, tok, sae, args.layer, [p for p, _ in chunk], [j for _, j in chunk], args.tokens,
                        non_content)

    def run_ours(chunk):
        return ours(model, tok, sae, args.layer, [p for p, _ in chunk], [j for _, j in chunk], args.tokens,
                    non_content, stop)

    run_base(jobs[:2]), run_ours(jobs[:2])  # warm-up
    tb, to = timed(run_base, jobs, args.batch), timed(run_ours, jobs, args.batch)
    print(f"tiny Llama d={d}, 4 layers, vocab {model.config.vocab_size}; SAE d_sae={args.d_sae} at layer "
          f"{args.layer}; {args.convs} conversations x {args.tokens} new tokens, batch {args.batch}, "
          f"{args.threads} threads")
    print(f"{'method':<52}{'conv/s':>10}{'seconds':>10}")
    print(f"{'baseline: generate + full forward + full SAE encode':<52}{args.convs / tb:>10.2f}{tb:>10.2f}")
    print(f"{'ours: one run, hook at layer L, one latent per row':<52}{args.convs / to:>10.2f}{to:>10.2f}")
    print(f"speed-up: {tb / to:.2f}x")


if __name__ == "__main__":
    main()

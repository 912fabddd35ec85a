"""Generation scoring: conversations/s of ours vs generate + full forward with hidden states + full SAE encode.

Both write the conversation from the instruction, then read the latent on the conversation alone (parsed
and rendered with the chat template, content tokens only) — the same definition, different cost:

* baseline: ``model.generate`` (finished rows ride along, padded), then a full forward over the
  conversations with ``output_hidden_states=True`` (every block + the LM head over the 128k vocabulary
  at every position) and a full SAE encode (all latents), then the target column is picked.
* ours (``generate_and_score``): finished rows leave the batch; the scoring forward stops right after
  block L (no upper blocks, no LM head) and only the target latent's encoder column is used.

Rows stop at varied lengths because the LM head gets a bias on <|eot_id|> (about 1 in 40 per step, like a
chat model that ends its turn). Runs alternate baseline/ours; the best of ``--repeats`` is reported. Equal
outputs: our conversations are also scored by the baseline scorer, and hits must match.

    python benchmarks/bench_generation_scoring.py [--layers 8] [--hidden 128] [--layer 3] [--d-sae 65536]
        [--convs 32] [--batch 16] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from selfie_adapters.evals.generation import (
    DEFAULT_PROMPT,
    content_token_mask,
    encode_chat,
    generate_and_score,
    parse_conversation,
)
from selfie_adapters.evals.sae_probe import SimpleSAE, latent_probe
from selfie_adapters.models.tokens import eos_token_ids, special_token_ids
from selfie_adapters.testing import make_llama3_tokenizer, make_tiny_llama
from selfie_adapters.vectors.hidden import hidden_states_batch

EOT = 128009


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad)
    attn = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, T - len(r):], attn[b, T - len(r):] = torch.tensor(r), 1
    return ids, attn


@torch.inference_mode()
def baseline_generate(model, tok, prompts, tokens, stop, special) -> list[str]:
    ids, attn = left_pad(prompts, tok.pad_token_id)
    seqs = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_p=1.0,
                          top_k=0, max_new_tokens=tokens, pad_token_id=tok.pad_token_id, eos_token_id=sorted(stop))
    return [tok.decode([t for t in row if t not in special]) for row in seqs[:, ids.shape[1]:].tolist()]


@torch.inference_mode()
def baseline_score(model, tok, sae, layer, texts, latents, special) -> tuple[list[bool], list[float]]:
    encoded = [content_token_mask(tok, c, special=special) if c else ([tok.bos_token_id], [False])
               for c in map(parse_conversation, texts)]
    ids, attn = left_pad([i for i, _ in encoded], tok.pad_token_id)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b, (_, m) in enumerate(encoded):
        mask[b, ids.shape[1] - len(m):] = torch.tensor(m)
    out = model(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp_min(0),
                output_hidden_states=True)
    acts = sae.encode(out.hidden_states[layer + 1])  # (B, T, d_sae): every latent
    a = acts.gather(-1, torch.tensor(latents)[:, None, None].expand(-1, ids.shape[1], 1))[..., 0]  # (B, T)
    a = torch.where(mask, a, torch.zeros_like(a))
    return ((a > 0).any(1)).tolist(), a.amax(1).tolist()


def ours(model, tok, sae, layer, prompts, latents, tokens, stop, special, seeds) -> list:
    probe = latent_probe(sae, latents)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    return generate_and_score(model, tok, prompts, probe, layer, max_new_tokens=tokens, temperature=1.0,
                              top_p=1.0, generators=gens, stop_ids=stop, special=special)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layer", type=int, default=3, help="SAE layer (residual after block L)")
    ap.add_argument("--d-sae", type=int, default=65536)
    ap.add_argument("--convs", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--stop-every", type=float, default=40.0, help="mean steps to <|eot_id|>")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = make_tiny_llama(layers=args.layers, hidden=args.hidden), make_llama3_tokenizer()
    V, d = model.config.vocab_size, args.hidden
    head = torch.nn.Linear(d, V, bias=True)  # P(<|eot_id|>) ≈ 1/stop_every per step
    head.weight.data, head.bias.data = model.lm_head.weight.data, torch.zeros(V)
    head.bias.data[EOT] = math.log(V / args.stop_every)
    model.lm_head = head.requires_grad_(False)
    labels = [f"label number {i} about fruit" for i in range(args.convs)]
    prompts = [encode_chat(tok, [{"role": "user", "content": DEFAULT_PROMPT.replace("{label}", x)}],
                           generation_prompt=True)[1] for x in labels]
    torch.manual_seed(0)
    W_enc = torch.randn(d, args.d_sae) / d ** 0.5
    sigma = (hidden_states_batch(model, prompts[:4], [args.layer], 0)[args.layer] @ W_enc[:, :512]).std()
    sae = SimpleSAE(W_enc, torch.full((args.d_sae,), -1.5 * float(sigma)), torch.zeros(d))  # fires now and then
    latents = [i * 997 % args.d_sae for i in range(args.convs)]
    stop, special = eos_token_ids(tok, model), special_token_ids(tok, model)
    chunks = [slice(s, s + args.batch) for s in range(0, args.convs, args.batch)]

    def run_base():
        return [baseline_score(model, tok, sae, args.layer,
                               baseline_generate(model, tok, prompts[c], args.tokens, stop, special),
                               latents[c], special) for c in chunks]

    def run_ours():
        return [r for c in chunks for r in ours(model, tok, sae, args.layer, prompts[c], latents[c], args.tokens,
                                                stop, special, range(c.start, c.start + args.batch))]

    ours(model, tok, sae, args.layer, prompts[:2], latents[:2], 4, stop, special, [0, 1])  # warm-up
    baseline_score(model, tok, sae, args.layer, baseline_generate(model, tok, prompts[:2], 4, stop, special),
                   latents[:2], special)
    tb, to = [], []
    for _ in range(args.repeats):  # alternate, so a busy neighbour slows both alike
        t0 = time.perf_counter()
        run_base()
        tb.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = run_ours()
        to.append(time.perf_counter() - t0)
    # equal outputs: the baseline scorer on our conversations
    texts = [t for t, _ in res]
    ref = [baseline_score(model, tok, sae, args.layer, texts[c], latents[c], special) for c in chunks]
    ref_hits = [h for hs, _ in ref for h in hs]
    ref_max = torch.tensor([m for _, ms in ref for m in ms])
    our_max = torch.tensor([s.max_act for _, s in res])
    same = sum(h == s.hit for h, (_, s) in zip(ref_hits, res))
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    tb, to = min(tb), min(to)
    print(f"tiny Llama d={d}, {args.layers} layers, vocab {V}; SAE d_sae={args.d_sae} at layer {args.layer}; "
          f"{args.convs} conversations, <= {args.tokens} new tokens (mean {sum(lengths) / len(lengths):.0f}), "
          f"batch {args.batch}, {args.threads} threads, best of {args.repeats}")
    print(f"{'method':<62}{'conv/s':>10}{'seconds':>10}")
    print(f"{'baseline: generate + full forward w/ hidden states + full encode':<62}{args.convs / tb:>10.2f}"
          f"{tb:>10.2f}")
    print(f"{'ours: pruned generate + forward to block L + one latent':<62}{args.convs / to:>10.2f}{to:>10.2f}")
    print(f"speed-up: {tb / to:.2f}x")
    print(f"same conversations, both scorers: {same}/{len(res)} equal hits ({sum(ref_hits)} hits); "
          f"max |Δ max_act| = {(ref_max - our_max).abs().max():.2e}")
    if same != len(res):
        raise SystemExit("hit decisions differ between the baseline scorer and ours")


if __name__ == "__main__":
    main()

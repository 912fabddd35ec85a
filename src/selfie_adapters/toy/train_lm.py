"""Train the toy Llama from scratch on the toy-world corpus and save it next to this file.

    python -m selfie_adapters.toy.train_lm            # ~5 min on 2 CPU cores
    python -m selfie_adapters.toy.train_lm --steps 200 --out /tmp/toy   # a quick smoke run
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from .lm import TOY_DIR, WORLD_FILE, greedy_answers, toy_llama_config
from .tokenizer import build_tokenizer
from .world import World, make_corpus, make_world, save_world, selfie_qa, tell_me_about, words

log = logging.getLogger(__name__)


@dataclass
class ToyLMConfig:
    """Everything that decides the trained weights."""

    n_concepts: int = 500
    world_seed: int = 0
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    threads: int | None = None


def assistant_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, header_id: int) -> torch.Tensor:
    """Labels that score only the assistant turn (tokens after the last ``<|end_header_id|>``)."""
    pos = torch.arange(input_ids.shape[1])  # (T,)
    is_header = input_ids == header_id  # (B, T)
    last_header = torch.where(is_header, pos, -1).max(dim=1, keepdim=True).values  # (B, 1)
    keep = (pos > last_header) & attention_mask.bool()  # (B, T)
    return torch.where(keep, input_ids, torch.full_like(input_ids, -100))


def _lr_factor(step: int, cfg: ToyLMConfig) -> float:
    """Linear warmup, then cosine to zero."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train_toy_lm(cfg: ToyLMConfig) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, World]:
    """Build the world, tokenizer and model, and train the model; returns all three."""
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    world = make_world(cfg.n_concepts, cfg.world_seed)
    tok = build_tokenizer(words(world))
    tok.padding_side = "right"
    model = LlamaForCausalLM(toy_llama_config(len(tok), tok))
    header_id = tok.convert_tokens_to_ids("<|end_header_id|>")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    model.train()
    for step in range(cfg.steps):
        # a fresh, seeded batch of chat examples each step
        texts = make_corpus(world, cfg.batch_size, seed=cfg.seed * 1_000_003 + step)
        enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        labels = assistant_labels(enc["input_ids"], enc["attention_mask"], header_id)  # (B, T)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("step %d  loss %.4f  lr %.2e", step, loss.item(), sched.get_last_lr()[0])
    return model.eval(), tok, world


def accuracy(model: LlamaForCausalLM, tok: PreTrainedTokenizerBase, world: World) -> dict[str, float]:
    """Fraction of concepts whose greedy answer is exactly right, for both question kinds."""
    scores = {}
    for name, make in (("tell_me_about", tell_me_about), ("selfie", selfie_qa)):
        pairs = [make(c) for c in world.concepts]
        got = greedy_answers(model, tok, [q for q, _ in pairs])
        scores[name] = sum(g == a for g, (_, a) in zip(got, pairs)) / len(pairs)
    return scores


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerBase, world: World, out: str | Path) -> None:
    """Model (safetensors), tokenizer and ``world.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.padding_side = "left"
    tok.save_pretrained(out)
    save_world(world, out / WORLD_FILE)


def main(argv: list[str] | None = None) -> None:
    """Train, check, save."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=ToyLMConfig.steps)
    p.add_argument("--seed", type=int, default=ToyLMConfig.seed)
    p.add_argument("--n-concepts", type=int, default=ToyLMConfig.n_concepts)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(TOY_DIR))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = ToyLMConfig(n_concepts=args.n_concepts, seed=args.seed, steps=args.steps, threads=args.threads)
    t0 = time.perf_counter()
    model, tok, world = train_toy_lm(cfg)
    print(f"trained {sum(p.numel() for p in model.parameters()):,} params in {time.perf_counter() - t0:.0f} s")
    for name, acc in accuracy(model, tok, world).items():
        print(f"greedy accuracy {name}: {acc:.3f}")
    save(model, tok, world, args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()

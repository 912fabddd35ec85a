"""Batched generation with soft tokens: left-pad, prefill (a shared prefix once), decode from the KV cache.

Rows leave the batch (and the cache) at their first stop id. Used by the describe API and by the
evals (conversations for generation scoring, without soft tokens).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..models.tree import LeftPadded, base_model, cache_kw, left_pad, model_device
from .inject import embed_with_soft_tokens, residual_overwrite


@dataclass(frozen=True)
class Generated:
    tokens: list[int]
    logprobs: list[float]
    closed: bool


@torch.inference_mode()
def generate(model, prompts: list[list[int]], sites: list[list[int]] | None = None,
             soft: torch.Tensor | None = None, *, inject_layer: int | None = None, max_new_tokens: int = 40,
             temperature: float = 0.0, top_p: float = 1.0, generators: list[torch.Generator] | None = None,
             stop_ids: Sequence[int] = (), pad_id: int = 0) -> list[Generated]:
    """Generate after each prompt with row b's soft token at ``sites[b]`` (none: plain prompts);
    each row stops at its first stop id and leaves the batch.

    Three steps: left-pad the prompts, prefill them (shared prefix once, soft tokens injected),
    decode token by token from the KV cache.
    """
    sites = sites if soft is not None and sites is not None else [[] for _ in prompts]
    batch = left_pad(prompts, pad_id, model_device(model))
    cache = DynamicCache(config=model.config)
    logits, mask = prefill(model, batch, prompts, sites, soft, cache, inject_layer=inject_layer)
    return decode(model, cache, logits, mask, batch.positions[:, -1] + 1, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p, generators=generators, stop_ids=stop_ids)


def prefill(model, batch: LeftPadded, prompts: list[list[int]], sites: list[list[int]], soft: torch.Tensor | None,
            cache: DynamicCache, *, inject_layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the prompts into ``cache`` with row b's soft token at ``sites[b]``.

    Equal prompts share one prefix pass (up to the first site, or all but the last token), copied
    to every row; then they need no attention mask. Returns the next-token logits (B, V) fp32 and
    the attention mask decoding must extend (None when the rows are unpadded).
    """
    site_mask = torch.zeros_like(batch.ids, dtype=torch.bool)  # (B, T)
    for b, (offset, s) in enumerate(zip(batch.offsets, sites)):
        site_mask[b, [offset + i for i in s]] = True
    shared = all(p == prompts[0] and s == sites[0] for p, s in zip(prompts, sites))
    start = (min(sites[0]) if sites[0] else len(prompts[0]) - 1) if shared else 0
    if start > 0:  # run the common prefix once, then copy its cache to every row
        base_model(model)(input_ids=batch.ids[:1, :start], position_ids=batch.positions[:1, :start],
                          use_cache=True, **cache_kw(model, cache))
        cache.batch_repeat_interleave(len(prompts))
    mask = None if shared else batch.attention
    # the last position as an index tensor, not logits_to_keep=1: HF then gathers a contiguous (B, 1, d)
    # copy, while the strided slice sends the head to a per-row bmm that re-reads its (V, d) weight
    # for every row (13x slower at a 128k vocabulary on CPU)
    last = torch.tensor([batch.ids.shape[1] - start - 1], device=batch.ids.device)
    with injected_embeddings(model, batch.ids[:, start:], site_mask[:, start:], soft, inject_layer) as embeds:
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.positions[:, start:],
                    use_cache=True, logits_to_keep=last, **cache_kw(model, cache))
    return out.logits[:, -1].float(), mask


@contextmanager
def injected_embeddings(model, ids: torch.Tensor, site_mask: torch.Tensor, soft: torch.Tensor | None,
                        inject_layer: int | None) -> Iterator[torch.Tensor]:
    """Input embeddings of ``ids`` (B, T) for one forward with the soft tokens (B, d) at the sites:
    in the embeddings themselves, or (``inject_layer``) overwriting the residual entering that block."""
    if soft is None:
        yield model.get_input_embeddings()(ids)
    elif inject_layer is None:
        yield embed_with_soft_tokens(model, ids, site_mask, soft)
    else:
        with residual_overwrite(model, inject_layer, site_mask, soft):
            yield model.get_input_embeddings()(ids)


def decode(model, cache: DynamicCache, logits: torch.Tensor, mask: torch.Tensor | None, next_pos: torch.Tensor, *,
           max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
           generators: list[torch.Generator] | None = None, stop_ids: Sequence[int] = ()) -> list[Generated]:
    """Token by token from a prefilled ``cache``; a row leaves the batch (and the cache) at its first stop id.

    logits: (B, V) for the first new token; next_pos: (B,) its position ids.
    """
    B = logits.shape[0]
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=logits.device)
    active = list(range(B))
    tokens: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    closed = [False] * B
    for step in range(max_new_tokens):
        gens = None if generators is None else [generators[b] for b in active]
        tok, lp = next_tokens(logits, temperature, top_p, gens)  # (b,), (b,)
        finished = torch.isin(tok, stop)
        for b, t, logp, fin in zip(active, tok.tolist(), lp.tolist(), finished.tolist()):
            tokens[b].append(t)
            logprobs[b].append(logp)
            closed[b] = fin
        keep = ~finished
        if step == max_new_tokens - 1 or not keep.any():
            break
        if not keep.all():  # drop finished rows from the batch and the cache
            rows = keep.nonzero()[:, 0]
            cache.batch_select_indices(rows)
            active = [active[i] for i in rows.tolist()]
            tok, next_pos = tok[rows], next_pos[rows]
            mask = None if mask is None else mask[rows]
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    use_cache=True, **cache_kw(model, cache))
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return [Generated(tokens[b], logprobs[b], closed[b]) for b in range(B)]


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generators: list[torch.Generator] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of each row and its log-probability: (B, V) → (B,), (B,)."""
    if temperature <= 0:  # one pass gives the greedy token and the max for the log-sum-exp
        top, tok = logits.max(dim=-1)
    else:
        tok, top = pick_tokens(logits, temperature, top_p, generators), logits.amax(dim=-1)
    # log p(tok) = z_tok − logsumexp(z), by hand: torch's log_softmax is ~2x slower on CPU
    lp = logits.gather(1, tok[:, None])[:, 0] - top - (logits - top[:, None]).exp_().sum(-1).log()
    return tok, lp


def pick_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                generators: list[torch.Generator] | None) -> torch.Tensor:
    """Greedy (temperature 0) or sampling with one generator per row. logits: (B, V) → (B,).

    Without nucleus truncation, sampling is the Gumbel-max trick (argmax of logits/T plus Gumbel
    noise is an exact softmax sample), much cheaper on CPU than multinomial over a 128k vocabulary.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if top_p >= 1.0:
        if generators is None:
            u = torch.rand_like(logits)
        else:
            u = torch.stack([torch.rand(logits.shape[1], generator=g, device=logits.device) for g in generators])
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))  # (B, V)
        return (logits / temperature + gumbel).argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
    probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    if generators is None:
        return torch.multinomial(probs, 1)[:, 0]
    return torch.stack([torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(generators)])


def derived_seed(*parts) -> int:
    """A stable 56-bit seed from (seed, item keys...), so sampling never depends on batching or order."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:7], "little")

"""The HF engine's fast path: one shared prompt, a static KV cache, and (on CUDA) decode steps as CUDA graphs.

``generate`` grows a ``DynamicCache`` by concatenation and launches every kernel of every decode step
from Python: on a GPU an 8B decode step is then bound by launch overhead, not by reading the weights.
Here, for a batch whose rows all share one prompt (``selfie describe``: the template with a soft token):

* the prefix before the first site runs once (batch 1) and is copied into a ``StaticCache`` of the
  batch (as ``generate`` copies it into its dynamic cache);
* the rest of the prompt (the soft tokens) is one forward into the static cache;
* each decode step writes one position of the preallocated cache in place, so its tensors keep their
  addresses and the step can be captured once as a CUDA graph (``torch.compile(mode="reduce-overhead")``)
  and replayed;
* finished rows: without graphs they leave the cache at once (as ``generate``); with graphs the batch
  is padded to a power of two (a short last batch reuses the shapes of the others), stays a fixed shape
  and is compacted into a cache half the size (from a pool kept across batches, one graph per size)
  only when at most half its rows are still generating.

Greedy tokens are those of ``generate`` (the masked tail of the cache adds exact zeros); log-probs
agree to float rounding (tests pin 1e-5 on CPU in fp32).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from transformers import DynamicCache, StaticCache

from ..errors import first_line
from ..models.tree import base_model, cache_kw, model_device
from .generate import Generated, injected_embeddings, next_tokens

log = logging.getLogger(__name__)
MIN_BUCKET_FRACTION = 4  # with graphs the batch shrinks to 1/4 of its start at most: 3 graph shapes (3 compiles)


class StaticDecoding:
    """Static caches (pooled with graphs) and the decode step of one model; held by an ``Interpreter``.

    ``graphs``: capture decode steps as CUDA graphs (CUDA only). ``compile_backend``: torch.compile's
    backend for them (default inductor; tests pass "eager" to exercise the tracing on CPU).
    """

    def __init__(self, model, *, graphs: bool = False, compile_backend=None) -> None:
        self.model, self.graphs = model, graphs or compile_backend is not None
        self.start_size = 1  # rows of the batch being decoded (the smallest bucket is a fraction of it)
        self._eager_only = False  # set when the compiled step failed once
        self._pool: dict[tuple[int, int], StaticCache] = {}
        self._cache_kw = next(iter(cache_kw(model, None)))  # "cache" or "past_key_values", looked up once
        self._step = self._compiled_step(compile_backend) if self.graphs else self._eager_step

    def cache(self, batch: int, length: int) -> StaticCache:
        """An empty static cache of ``batch`` rows × ``length`` positions (the same object per shape with graphs:
        its tensors' addresses are what a captured graph reads)."""
        if not self.graphs:
            return StaticCache(config=self.model.config, max_cache_len=length)
        key = (batch, length)
        if key not in self._pool:
            self._pool[key] = StaticCache(config=self.model.config, max_cache_len=length)
        else:
            self._pool[key].reset()
        return self._pool[key]

    def _eager_step(self, ids: torch.Tensor, positions: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=positions, use_cache=True, **{self._cache_kw: cache})
        return out.logits[:, -1]

    def _compiled_step(self, backend):
        if backend is None:
            compiled = torch.compile(self._eager_step, mode="reduce-overhead", fullgraph=False, dynamic=False)
        else:
            compiled = torch.compile(self._eager_step, backend=backend, fullgraph=False, dynamic=False)

        def step(ids: torch.Tensor, positions: torch.Tensor, cache: StaticCache) -> torch.Tensor:
            if self._eager_only:
                return self._eager_step(ids, positions, cache)
            if ids.is_cuda:
                torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs were copied out
            try:
                return compiled(ids, positions, cache)
            except Exception as e:  # noqa: BLE001 - a compiler failure must not lose the run: decode eagerly
                log.warning("compiled decode step failed (%s: %s); decoding without CUDA graphs",
                            type(e).__name__, first_line(e))
                self._eager_only = True
                _rewind(cache, int(positions[0, 0]))
                return self._eager_step(ids, positions, cache)

        return step


def _rewind(cache: StaticCache, written: int) -> None:
    """Reset each static layer's write position to ``written`` (a failed compiled step may have advanced some)."""
    for layer in cache.layers:
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):
            length.fill_(written)


def fill_cache(cache: StaticCache, source, rows: torch.Tensor | None, length: int, batch: int) -> None:
    """Write positions ``0:length`` of ``source``'s layers (rows ``rows``, or its one row repeated ``batch``
    times) into the empty static ``cache``."""
    positions = torch.arange(length, device=source.layers[0].keys.device)
    for i, layer in enumerate(source.layers):
        keys, values = layer.keys[:, :, :length], layer.values[:, :, :length]  # (b, H, length, D)
        if rows is None:
            keys, values = keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)
        else:
            keys, values = keys[rows], values[rows]
        cache.update(keys.contiguous(), values.contiguous(), i, {"cache_position": positions})


@torch.inference_mode()
def generate_static(decoding: StaticDecoding, prompt: list[int], sites: list[int], soft: torch.Tensor, *,
                    inject_layer: int | None = None, max_new_tokens: int = 40, temperature: float = 0.0,
                    top_p: float = 1.0, generators: list[torch.Generator] | None = None,
                    stop_ids: Sequence[int] = ()) -> list[Generated]:
    """``generate`` for B rows that share ``prompt`` with soft token ``soft[b]`` (B, d) at ``sites``."""
    model, rows, P = decoding.model, len(soft), len(prompt)
    device, length = model_device(model), P + max_new_tokens
    B = 1 << (rows - 1).bit_length() if decoding.graphs else rows  # graph shapes: powers of two
    if rows < B:  # filler rows repeat the first one; their outputs are dropped
        soft = torch.cat([soft, soft[:1].expand(B - rows, -1)])
    ids = torch.tensor([prompt], device=device)  # (1, P)
    positions = torch.arange(P, device=device)[None]  # (1, P)
    start = min(sites) if sites else P - 1
    cache = decoding.cache(B, length)
    decoding.start_size = B
    if start > 0:  # the shared prefix once, copied to every row
        prefix = DynamicCache(config=model.config)
        base_model(model)(input_ids=ids[:, :start], position_ids=positions[:, :start], use_cache=True,
                          **cache_kw(model, prefix))
        fill_cache(cache, prefix, None, start, B)
    site_mask = torch.zeros(B, P - start, dtype=torch.bool, device=device)  # (B, P - start)
    site_mask[:, [s - start for s in sites]] = True
    last = torch.tensor([P - start - 1], device=device)
    with injected_embeddings(model, ids[:, start:].expand(B, -1), site_mask, soft, inject_layer) as embeds:
        out = model(inputs_embeds=embeds, position_ids=positions[:, start:].expand(B, -1), use_cache=True,
                    logits_to_keep=last, **cache_kw(model, cache))
    logits = out.logits[:, -1].float()  # (B, V)
    return _decode(decoding, cache, logits, P, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_p=top_p, generators=generators, stop_ids=stop_ids)


def _decode(decoding: StaticDecoding, cache: StaticCache, logits: torch.Tensor, written: int, rows: int, *,
            max_new_tokens: int, temperature: float, top_p: float, generators: list[torch.Generator] | None,
            stop_ids: Sequence[int]) -> list[Generated]:
    """Token by token in the static cache for ``rows`` rows. ``slots[i]``: the row in cache slot i (None: a
    finished row or a filler, whose outputs are ignored); logits (S, V) for every slot."""
    B, device = rows, logits.device
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    slots: list[int | None] = list(range(B)) + [None] * (logits.shape[0] - B)
    tokens: list[list[int]] = [[] for _ in range(B)]
    logprobs: list[list[float]] = [[] for _ in range(B)]
    closed = [False] * B
    for step in range(max_new_tokens):
        live = [i for i, row in enumerate(slots) if row is not None]
        idx = torch.tensor(live, device=device)
        gens = None if generators is None else [generators[slots[i]] for i in live]
        tok, lp = next_tokens(logits if len(live) == len(slots) else logits[idx], temperature, top_p, gens)
        finished = torch.isin(tok, stop)
        for i, t, logp, fin in zip(live, tok.tolist(), lp.tolist(), finished.tolist()):
            row = slots[i]
            tokens[row].append(t)
            logprobs[row].append(logp)
            closed[row] = fin
            if fin:
                slots[i] = None
        if step == max_new_tokens - 1 or finished.all():
            break
        feed = torch.zeros(len(slots), dtype=torch.long, device=device)  # finished slots read token 0
        feed[idx] = tok
        cache, slots, feed = _maybe_compact(decoding, cache, slots, feed, written)
        positions = torch.full((len(slots), 1), written, dtype=torch.long, device=device)
        # a graph's outputs live in its pool until the next replay: copy them out
        logits = decoding._step(feed[:, None], positions, cache).to(torch.float32, copy=decoding.graphs)  # (S, V)
        written += 1
    return [Generated(tokens[b], logprobs[b], closed[b]) for b in range(B)]


def _maybe_compact(decoding: StaticDecoding, cache: StaticCache, slots: list[int | None], feed: torch.Tensor,
                   written: int) -> tuple[StaticCache, list[int | None], torch.Tensor]:
    """Move the live rows into a smaller cache: at once without graphs (as ``generate`` drops rows), else only
    when at most half the slots live, into the next power-of-two size (fillers repeat the first live row)."""
    live = [i for i, row in enumerate(slots) if row is not None]
    size = len(slots)
    if decoding.graphs:
        floor = max(1, decoding.start_size // MIN_BUCKET_FRACTION)
        target = max(1 << (len(live) - 1).bit_length(), floor)
        if target > size // 2:
            return cache, slots, feed
    else:
        target = len(live)
        if target == size:
            return cache, slots, feed
    order = live + [live[0]] * (target - len(live))
    rows = torch.tensor(order, device=feed.device)
    new = decoding.cache(target, cache.layers[0].max_cache_len)
    fill_cache(new, cache, rows, written, target)
    return new, [slots[i] for i in live] + [None] * (target - len(live)), feed[rows]

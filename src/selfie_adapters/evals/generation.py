"""Generation scoring of SAE latents: does a conversation written *about* a label make the latent fire?

For each (latent, label) the model writes ``samples`` short conversations (chat template, sampled).
The latent is read at the SAE's layer (residual stream after block L = output of
``decoder_layers(model)[L]``) from the hidden states of the *same* generation run — a forward hook on
block L — so no second forward and no full SAE encode are needed. A trial *hits* when the latent is
> 0 on any content token. Content = tokens the model wrote that are not special tokens (EOS, headers);
the prompt (BOS, system block, instruction, role headers) is context and never counts.

Scores: per latent, the hit rate of its best label (``best_label_hit_rate``); ``mean_max_hit_rate`` =
mean over latents of that (biased upwards: the max of noisy rates); ``mean_hit_rate`` = mean over
latents of the mean over their labels (unbiased, with a bootstrap CI over latents);
``heldout_best_label_hit_rate`` picks the best label on even samples and scores it on odd ones.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..errors import SelfieError
from ..interpret import pick_tokens
from ..jsonl import JsonlLog
from ..modeling import cache_kw, decoder_layers, eos_token_ids, model_device, pad_token_id
from .sae_probe import LatentProbe, latent_probe, sae_layer, sae_size

log = logging.getLogger(__name__)

DEFAULT_PROMPT = ("Write a short conversation between a user and an assistant in which the following "
                  "clearly comes up: {label}. Write only the conversation.")


@dataclass(frozen=True)
class Trial:
    latent: int
    label: str
    sample: int

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.latent, self.label, self.sample)


@dataclass(frozen=True)
class Scored:
    tokens: list[int]
    hit: bool
    max_act: float  # max activation over content tokens (0.0 if none)
    n_content: int
    first_hit: int | None  # index into tokens of the first content token where the latent fired


class _StopAtLayer(Exception):
    pass


def special_token_ids(tokenizer, model=None) -> set[int]:
    """Ids that are never content: special/added-special tokens and every EOS id."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for tid, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(tid))
    return ids | eos_token_ids(tokenizer, model)


def render_chat(tokenizer, messages: list[dict], *, generation_prompt: bool) -> tuple[str, list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise SelfieError("generation scoring needs a tokenizer with a chat template; use the model's own "
                          "tokenizer (an instruct model)")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return text, list(tokenizer(text, add_special_tokens=False)["input_ids"])


def content_token_mask(tokenizer, messages: list[dict], *, roles: Sequence[str] = ("user", "assistant"),
                       model=None) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered chat and a mask of its content tokens (the ``roles``' message text).

    Each message's text is located in the rendered template string and mapped to tokens through
    the tokenizer's offsets; special tokens, role headers, BOS and the system block (including a
    default one the template inserts) fall outside every counted span.
    """
    text, _ = render_chat(tokenizer, messages, generation_prompt=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, cursor = [], 0
    for m in messages:
        content = str(m["content"]).strip()
        at = text.find(content, cursor) if content else -1
        if at < 0:
            continue
        cursor = at + len(content)
        if m["role"] in roles:
            spans.append((at, cursor))
    special = special_token_ids(tokenizer, model)
    mask = [tid not in special and e > s and any(a <= s and e <= b for a, b in spans)
            for tid, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])]
    return list(enc["input_ids"]), mask


@contextmanager
def capture_layer(model, layer: int, store: dict):
    """Keep the output of block ``layer`` in ``store['h']``; raise _StopAtLayer when ``store['stop']``."""
    def hook(module, args, output):
        store["h"] = output[0] if isinstance(output, tuple) else output
        if store.get("stop"):
            raise _StopAtLayer

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@torch.inference_mode()
def generate_and_score(model, prompts: list[list[int]], probe: LatentProbe, layer: int, *,
                       max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                       generators: list[torch.Generator] | None = None, stop_ids: set[int] = frozenset(),
                       non_content: set[int] = frozenset(), pad_id: int = 0) -> list[Scored]:
    """Sample a continuation of each prompt and read row b's latent on every token it writes, one run.

    Each sampled token's block-``layer`` state is computed when the token is fed back; the very last
    token is fed once more with the forward stopped right after block ``layer`` (no LM head).
    """
    device = model_device(model)
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding
        ids[b, T - len(p):] = torch.tensor(p)
        attn[b, T - len(p):] = 1
    ids, attn = ids.to(device), attn.to(device)
    position = (attn.cumsum(-1) - 1).clamp_min(0)  # (B, T)
    cache = DynamicCache(config=model.config)
    stop = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    skip = torch.tensor(sorted(non_content | stop_ids), dtype=torch.long, device=device)
    store: dict = {}
    tokens = torch.empty(B, 0, dtype=torch.long, device=device)
    live = torch.ones(B, dtype=torch.bool, device=device)  # row has not yet emitted a stop token
    max_act = torch.zeros(B, device=device)
    n_content = torch.zeros(B, dtype=torch.long, device=device)
    first_hit = torch.full((B,), -1, dtype=torch.long, device=device)
    with capture_layer(model, layer, store):
        out = model(input_ids=ids, attention_mask=attn, position_ids=position, use_cache=True,
                    logits_to_keep=1, **cache_kw(model, cache))
        next_pos = position[:, -1] + 1
        for step in range(max_new_tokens):
            tok = sample_tokens(out.logits[:, -1].float(), temperature, top_p, generators)  # (B,)
            tok = torch.where(live, tok, torch.full_like(tok, pad_id))
            counts = live & ~torch.isin(tok, skip)  # content: a live row's non-special token
            live = live & ~torch.isin(tok, stop)
            tokens = torch.cat([tokens, tok[:, None]], dim=1)
            attn = torch.cat([attn, attn.new_ones(B, 1)], dim=1)
            last = step == max_new_tokens - 1 or not live.any()
            store["stop"] = last  # the final feed only needs block `layer`
            with suppress(_StopAtLayer):
                out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                            use_cache=not last, logits_to_keep=1, **cache_kw(model, cache))
            act = probe.activations(store["h"])[:, -1]  # (B,)
            act = torch.where(counts, act, torch.zeros_like(act))
            max_act = torch.maximum(max_act, act)
            n_content += counts.long()
            first_hit = torch.where((first_hit < 0) & (act > 0), torch.full_like(first_hit, step), first_hit)
            next_pos = next_pos + 1
            if last:
                break
    rows = tokens.tolist()
    return [Scored(_trim(rows[b], stop_ids), bool(first_hit[b] >= 0), float(max_act[b]), int(n_content[b]),
                   None if first_hit[b] < 0 else int(first_hit[b])) for b in range(B)]


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generators: list[torch.Generator] | None) -> torch.Tensor:
    """(B, V) logits → (B,) tokens. Without nucleus truncation, sample by the Gumbel-max trick
    (argmax of logits/T + Gumbel noise is an exact softmax sample) — much cheaper than multinomial
    over a 128k vocabulary on CPU; otherwise defer to the interpreter's sampler."""
    if temperature <= 0 or top_p < 1.0:
        return pick_tokens(logits, temperature, top_p, generators)
    if generators is None:
        u = torch.rand_like(logits)
    else:
        u = torch.stack([torch.rand(logits.shape[1], generator=g, device=logits.device) for g in generators])
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)).clamp_min(1e-20))
    return (logits / temperature + gumbel).argmax(dim=-1)


def _trim(seq: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(seq):
        if t in stop_ids:
            return seq[:i + 1]
    return seq


@torch.inference_mode()
def score_conversations(model, tokenizer, sae, latent: int, conversations: Sequence[list[dict]], *,
                        layer: int | None = None, batch_size: int = 8) -> list[Scored]:
    """Score already-written conversations (chat message lists): one forward per batch, stopped after
    block ``layer``, latent read on content tokens only (see ``content_token_mask``)."""
    layer = resolve_layer(model, sae, layer)
    out = []
    for s in range(0, len(conversations), batch_size):
        chunk = conversations[s:s + batch_size]
        encoded = [content_token_mask(tokenizer, list(c), model=model) for c in chunk]
        T = max(len(i) for i, _ in encoded)
        ids = torch.full((len(chunk), T), pad_token_id(tokenizer), dtype=torch.long)
        attn, mask = torch.zeros_like(ids), torch.zeros(len(chunk), T, dtype=torch.bool)
        for b, (i, m) in enumerate(encoded):
            ids[b, T - len(i):], attn[b, T - len(i):] = torch.tensor(i), 1
            mask[b, T - len(i):] = torch.tensor(m, dtype=torch.bool)
        device = model_device(model)
        store = {"stop": True}
        with capture_layer(model, layer, store), suppress(_StopAtLayer):
            model.model(input_ids=ids.to(device), attention_mask=attn.to(device),
                        position_ids=(attn.cumsum(-1) - 1).clamp_min(0).to(device), use_cache=False)
        probe = latent_probe(sae, [latent] * len(chunk), device)
        acts = probe.activations(store["h"]).cpu() * mask  # (B, T), zero outside content
        for b, (i, m) in enumerate(encoded):
            a = acts[b, T - len(i):]
            fired = (a > 0).nonzero()
            out.append(Scored(i, bool(len(fired)), float(a.max()) if len(i) else 0.0, int(sum(m)),
                              int(fired[0, 0]) if len(fired) else None))
    return out


def resolve_layer(model, sae, layer: int | None) -> int:
    layer = sae_layer(sae) if layer is None else layer
    n = len(decoder_layers(model))
    if layer is None:
        raise SelfieError("cannot tell which layer the SAE reads; pass --layer L (residual after block L)")
    if not 0 <= layer < n:
        raise SelfieError(f"layer {layer} out of range; this model has blocks 0..{n - 1}")
    d, _ = sae_size(sae)
    if d != model.config.hidden_size:
        raise SelfieError(f"the SAE reads {d}-dim vectors but the model's hidden size is "
                          f"{model.config.hidden_size}; use the SAE trained on this model")
    return layer


def parse_label_rows(rows: Sequence[dict], source: str = "labels") -> list[tuple[int, str]]:
    """(latent, label) pairs from rows with ``latent`` (or ``index``, as ``selfie describe`` writes) and ``label``."""
    out, seen = [], set()
    for n, row in enumerate(rows):
        latent = row.get("latent", row.get("index"))
        label = row.get("label")
        if not isinstance(latent, int) or isinstance(latent, bool) or not isinstance(label, str):
            raise SelfieError(f"{source} row {n}: needs an integer 'latent' and a string 'label', got "
                              f"{ {k: row.get(k) for k in ('latent', 'label')} }")
        if label.strip() and (latent, label) not in seen:
            seen.add((latent, label))
            out.append((latent, label))
    if not out:
        raise SelfieError(f"{source}: no (latent, label) pairs to score")
    return out


def labels_from_adapter(interpreter, sae, latents: Sequence[int], **describe_kw) -> list[tuple[int, str]]:
    """Labels written on the fly: the interpreter describes each latent's decoder row ``W_dec[latent]``."""
    from ..vectors import decoder_rows

    rows, kept = decoder_rows(sae.W_dec.detach(), list(latents))
    descs = interpreter.describe(rows, indices=kept, **describe_kw)
    return parse_label_rows([{"latent": d.index, "label": d.label} for d in descs], source="adapter labels")


def generation_eval(model, tokenizer, sae, labels: Sequence[tuple[int, str]] | Sequence[dict],
                    out: str | os.PathLike, *, layer: int | None = None, samples: int = 4,
                    prompt: str = DEFAULT_PROMPT, system: str | None = None, max_new_tokens: int = 64,
                    temperature: float = 1.0, top_p: float = 0.95, seed: int = 0, batch_size: int = 8,
                    progress: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) generation scoring, appending one JSONL row per trial to ``out``; return the summary.

    >>> rep = generation_eval(model, tok, sae, [(123, "words about fruit")], "gen.jsonl", samples=8)
    >>> rep["mean_max_hit_rate"]
    """
    layer = resolve_layer(model, sae, layer)
    if "{label}" not in prompt:
        raise SelfieError(f"the prompt must contain {{label}} where the label goes; got {prompt!r:.80}")
    pairs = labels if all(isinstance(x, tuple) for x in labels) else parse_label_rows(list(labels))
    settings = {"layer": layer, "prompt": prompt, "system": system, "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "seed": seed}
    jlog = JsonlLog(out, settings)
    done = jlog.done_keys(lambda r: (r["latent"], r["label"], r["sample"]))
    trials = [Trial(lat, lab, k) for lat, lab in pairs for k in range(samples) if (lat, lab, k) not in done]
    trials.sort(key=lambda t: t.label)  # equal prompts side by side → less padding
    ctx = _RunContext(model, tokenizer, sae, layer, prompt, system, max_new_tokens, temperature, top_p, seed)
    for s in range(0, len(trials), batch_size):
        batch = trials[s:s + batch_size]
        jlog.append(ctx.run_batch(batch))
        if progress is not None:
            progress(len(batch))
    keys = {(lat, lab) for lat, lab in pairs}
    return summarize([r for r in jlog.rows if (r["latent"], r["label"]) in keys and r["sample"] < samples])


class _RunContext:
    """Everything one batch of trials needs; a failing batch is retried trial by trial."""

    def __init__(self, model, tokenizer, sae, layer, prompt, system, max_new_tokens, temperature, top_p, seed):
        self.model, self.tokenizer, self.sae, self.layer = model, tokenizer, sae, layer
        self.prompt, self.system, self.seed = prompt, system, seed
        self.gen_kw = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        self.stop_ids = eos_token_ids(tokenizer, model)
        self.non_content = special_token_ids(tokenizer, model)

    def messages(self, label: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": self.prompt.replace("{label}", label)}]

    def run_batch(self, batch: list[Trial]) -> list[dict]:
        try:
            return self._run(batch)
        except Exception as e:  # noqa: BLE001 — one bad trial must not end the run
            if len(batch) == 1:
                log.warning("trial %s failed: %s", batch[0].key, e)
                return [{"latent": batch[0].latent, "label": batch[0].label, "sample": batch[0].sample,
                         "status": "failed", "error": f"{type(e).__name__}: {e}"[:300]}]
            return [row for t in batch for row in self.run_batch([t])]

    def _run(self, batch: list[Trial]) -> list[dict]:
        device = model_device(self.model)
        prompts = [render_chat(self.tokenizer, self.messages(t.label), generation_prompt=True)[1] for t in batch]
        gens = [torch.Generator(device=device).manual_seed(_trial_seed(self.seed, t)) for t in batch]
        probe = latent_probe(self.sae, [t.latent for t in batch], device)
        scored = generate_and_score(self.model, prompts, probe, self.layer, generators=gens,
                                    stop_ids=self.stop_ids, non_content=self.non_content,
                                    pad_id=pad_token_id(self.tokenizer), **self.gen_kw)
        return [{"latent": t.latent, "label": t.label, "sample": t.sample, "status": "ok", "hit": s.hit,
                 "max_act": s.max_act, "n_content": s.n_content, "first_hit": s.first_hit,
                 "text": self.tokenizer.decode([x for x in s.tokens if x not in self.non_content])}
                for t, s in zip(batch, scored)]


def _trial_seed(seed: int, t: Trial) -> int:
    digest = hashlib.sha256(f"{seed}:{t.latent}:{t.label}:{t.sample}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def summarize(rows: Sequence[dict], *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-latent and overall hit rates from trial rows (failed trials are counted apart, not as misses)."""
    hits: dict[int, dict[str, list[tuple[int, bool]]]] = defaultdict(lambda: defaultdict(list))
    failed = 0
    for r in rows:
        if r.get("status") != "ok":
            failed += 1
            continue
        hits[r["latent"]][r["label"]].append((r["sample"], bool(r["hit"])))
    per_latent = {}
    for lat, by_label in sorted(hits.items()):
        rates = {lab: sum(h for _, h in v) / len(v) for lab, v in by_label.items()}
        best = max(rates, key=rates.get)
        per_latent[str(lat)] = {"best_label": best, "best_label_hit_rate": rates[best],
                                "mean_hit_rate": sum(rates.values()) / len(rates),
                                "heldout_best_label_hit_rate": _heldout_best(by_label), "labels": rates}
    means = torch.tensor([v["mean_hit_rate"] for v in per_latent.values()], dtype=torch.float64)
    lo, hi = _bootstrap_ci(means, n_boot, seed)
    heldout = [v["heldout_best_label_hit_rate"] for v in per_latent.values()
               if v["heldout_best_label_hit_rate"] is not None]
    return {
        "n_latents": len(per_latent), "n_trials": len(rows) - failed, "n_failed": failed,
        "mean_max_hit_rate": _mean([v["best_label_hit_rate"] for v in per_latent.values()]),
        "mean_hit_rate": _mean(means.tolist()), "mean_hit_rate_ci95": [lo, hi],
        "heldout_best_label_hit_rate": _mean(heldout),
        "per_latent": per_latent,
    }


def _heldout_best(by_label: dict[str, list[tuple[int, bool]]]) -> float | None:
    """Choose the best label on even samples, report its hit rate on odd samples (None if too few)."""
    def rate(v, parity):
        xs = [h for k, h in v if k % 2 == parity]
        return sum(xs) / len(xs) if xs else None

    train = {lab: rate(v, 0) for lab, v in by_label.items()}
    train = {k: v for k, v in train.items() if v is not None}
    if not train:
        return None
    best = max(train, key=train.get)
    return rate(by_label[best], 1)


def _bootstrap_ci(values: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (n_boot, len(values)), generator=g)
    boots = values[idx].mean(1)
    return boots.quantile(0.025).item(), boots.quantile(0.975).item()


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")

"""Generation scoring of SAE latents: does a conversation written *about* a label make the latent fire?

For each (latent, label) the model writes ``samples`` short conversations (chat template, sampled,
one seeded generator per trial). Two phases per batch of trials:

1. *Generate*: batched sampling with a KV cache; rows that emit EOS leave the batch
   (``cache.batch_select_indices``), so the batch shrinks as conversations end.
2. *Score*: the written text is parsed into user/assistant turns (``parse_conversation``) and rendered
   with the chat template **on its own** — the instruction that named the label is not part of it, so a
   latent about the label cannot fire just because the instruction mentioned it. One batched forward
   stops right after block L (``vectors.hidden_states_batch``: no upper blocks, no LM head) and only the
   target latent is encoded (one encoder column for ReLU/JumpReLU). A trial *hits* when the latent is
   > 0 on any content token (``content_token_mask``: BOS, system block, role headers, EOS never count).

Scores: per latent, the hit rate of its best label (``best_label_hit_rate``); ``mean_max_hit_rate`` =
mean over latents of that (biased upwards: the max of noisy rates); ``mean_hit_rate`` = mean over
latents of the mean over their labels (unbiased, with a bootstrap CI over latents);
``heldout_best_label_hit_rate`` picks the best label on even samples and scores it on odd ones.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..adapters.guard import model_signature
from ..errors import SelfieError
from ..interpret.generate import derived_seed, generate
from ..models.tokens import conversation_stop_ids, eos_token_ids, pad_token_id, special_token_ids
from ..models.tree import check_layers, model_device
from ..runs.row_log import JsonlLog
from ..vectors.hidden import hidden_states_batch
from .conversations import (  # noqa: F401  (re-exported: generation scoring's public names)
    DEFAULT_PROMPT,
    GENERATION_PROTOCOLS,
    REFERENCE_PROMPT,
    REFERENCE_SYSTEM,
    GenerationProtocol,
    after_bos_mask,
    content_token_mask,
    encode_chat,
    parse_conversation,
    parse_tagged_conversation,
)
from .protocols import lookup
from .sae_probe import LatentProbe, latent_probe, sae_layer, sae_size

log = logging.getLogger(__name__)

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
    tokens: list[int]  # the rendered conversation that was scored (chat template included)
    hit: bool
    max_act: float  # max activation over content tokens (0.0 if none)
    n_content: int
    first_hit: int | None  # index among the content tokens of the first one where the latent fired


def get_protocol(name: str) -> GenerationProtocol:
    return lookup(GENERATION_PROTOCOLS, name)


@torch.inference_mode()
def generate_conversations(model, prompts: list[list[int]], *, max_new_tokens: int = 64,
                           temperature: float = 1.0, top_p: float = 1.0,
                           generators: list[torch.Generator] | None = None,
                           stop_ids: set[int] = frozenset(), pad_id: int = 0) -> list[list[int]]:
    """Sample a continuation of each (token-id) prompt; row b's tokens up to and including its stop token.

    The interpreter's decoding loop without soft tokens: left-padded batch with a KV cache, equal
    prompts share one prefix pass, and a row that emits a stop token leaves the batch.
    """
    outs = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                    generators=generators, stop_ids=sorted(stop_ids), pad_id=pad_id)
    return [g.tokens for g in outs]


@torch.inference_mode()
def score_token_rows(model, encoded: Sequence[tuple[list[int], list[bool]]], probe: LatentProbe, layer: int,
                     pad_id: int) -> list[Scored]:
    """Row b = (token ids, content mask) of one rendered conversation; read probe row b's latent on it.

    One left-padded forward stopped right after block ``layer``; rows without content tokens are not run.
    """
    scored = [Scored(list(ids), False, 0.0, 0, None) for ids, _ in encoded]
    live = [i for i, (_, m) in enumerate(encoded) if any(m)]
    if not live:
        return scored
    h = hidden_states_batch(model, [list(encoded[i][0]) for i in live], [layer], pad_id)[layer]  # (b, T, d)
    T = h.shape[1]
    mask = torch.zeros(len(live), T, dtype=torch.bool)
    for b, i in enumerate(live):
        m = encoded[i][1]
        mask[b, T - len(m):] = torch.tensor(m, dtype=torch.bool)
    acts = probe.select(live).activations(h).cpu()  # (b, T)
    for b, i in enumerate(live):
        a = acts[b][mask[b]]  # (n_content,) in token order
        fired = (a > 0).nonzero()
        scored[i] = Scored(list(encoded[i][0]), bool(len(fired)), float(a.max().clamp_min(0)), len(a),
                           int(fired[0, 0]) if len(fired) else None)
    return scored


def generate_and_score(model, tokenizer, prompts: list[list[int]], probe: LatentProbe, layer: int, *,
                       max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                       generators: list[torch.Generator] | None = None, stop_ids: set[int] | None = None,
                       special: set[int] | None = None, parse: Callable[[str], list[dict]] = parse_conversation,
                       mask: Callable[..., tuple[list[int], list[bool]]] = content_token_mask
                       ) -> list[tuple[str, Scored]]:
    """Write one conversation per prompt, then score it on its own: [(written text, Scored)] per row.

    The prompt (which names the label) is only used to write; the latent is read on the parsed
    conversation rendered with the chat template (see ``parse_conversation``, ``content_token_mask``).
    ``stop_ids``/``special`` default to ``eos_token_ids``/``special_token_ids`` (precompute them for many calls);
    ``parse``/``mask`` are the protocol's parser and read positions.
    """
    stop = eos_token_ids(tokenizer, model) if stop_ids is None else stop_ids
    special = special_token_ids(tokenizer, model) if special is None else special
    written = generate_conversations(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                                     top_p=top_p, generators=generators, stop_ids=stop,
                                     pad_id=pad_token_id(tokenizer))
    texts = [tokenizer.decode([t for t in w if t not in special]) for w in written]
    convs = [parse(t) for t in texts]
    encoded = [mask(tokenizer, c, special=special) if c else ([], []) for c in convs]
    return list(zip(texts, score_token_rows(model, encoded, probe, layer, pad_token_id(tokenizer))))


def score_conversations(model, tokenizer, sae, latent: int, conversations: Sequence[list[dict]], *,
                        layer: int | None = None, batch_size: int = 8) -> list[Scored]:
    """Score already-written conversations (chat message lists): one forward per batch, stopped after
    block ``layer``, latent read on content tokens only (see ``content_token_mask``)."""
    layer = resolve_layer(model, sae, layer)
    special, out = special_token_ids(tokenizer, model), []
    for s in range(0, len(conversations), batch_size):
        chunk = conversations[s:s + batch_size]
        encoded = [content_token_mask(tokenizer, list(c), special=special) if c else ([], []) for c in chunk]
        probe = latent_probe(sae, [latent] * len(chunk), model_device(model))
        out += score_token_rows(model, encoded, probe, layer, pad_token_id(tokenizer))
    return out


def resolve_layer(model, sae, layer: int | None) -> int:
    layer = sae_layer(sae) if layer is None else layer
    if layer is None:
        raise SelfieError("cannot tell which layer the SAE reads; pass --layer L (residual after block L)")
    check_layers(model, [layer], "layer")
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
    from ..vectors.sae import decoder_rows

    rows, kept = decoder_rows(sae.W_dec.detach(), list(latents))
    descs = interpreter.describe(rows, indices=kept, **describe_kw)
    return parse_label_rows([{"latent": d.index, "label": d.label} for d in descs], source="adapter labels")


def generation_eval(model, tokenizer, sae, labels: Sequence[tuple[int, str]] | Sequence[dict],
                    out: str | os.PathLike, *, layer: int | None = None, protocol: str = "default",
                    samples: int | None = None, prompt: str | None = None, system: str | None = None,
                    max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
                    seed: int = 0, batch_size: int = 8, progress: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) generation scoring, appending one JSONL row per trial to ``out``; return the summary.

    ``protocol``: ``"default"`` (this project: content tokens only, ``User:``/``Assistant:`` turns) or
    ``"reference"`` (the reference implementation's prompt, system message, ``[USER]``/``[ASSISTANT]``
    parsing, T 0.7, top-p 0.9, 100 tokens, 10 samples, every token after BOS). Arguments left None take
    the protocol's values; the summary names the protocol.

    >>> rep = generation_eval(model, tok, sae, [(123, "words about fruit")], "gen.jsonl", protocol="reference")
    >>> rep["mean_max_hit_rate"]
    """
    proto = get_protocol(protocol)
    layer = resolve_layer(model, sae, layer)
    prompt = proto.prompt if prompt is None else prompt
    if proto.placeholder not in prompt:
        raise SelfieError(f"the prompt must contain {proto.placeholder} where the label goes; got {prompt!r:.80}")
    run = {"samples": samples or proto.samples, "max_new_tokens": max_new_tokens or proto.max_new_tokens,
           "temperature": proto.temperature if temperature is None else temperature,
           "top_p": proto.top_p if top_p is None else top_p, "system": proto.system if system is None else system}
    pairs = labels if all(isinstance(x, tuple) for x in labels) else parse_label_rows(list(labels))
    # "read_on" marks rows scored on the conversation alone: files of the old in-context scorer won't resume
    settings = {"read_on": "conversation", "protocol": protocol, "model": model_signature(model), "layer": layer,
                "prompt": prompt, "system": run["system"], "max_new_tokens": run["max_new_tokens"],
                "temperature": run["temperature"], "top_p": run["top_p"], "seed": seed}
    n = run["samples"]
    with JsonlLog(out, settings, command="eval generation", key_fields=("latent", "label", "sample")) as jlog:
        done = jlog.done_keys(lambda r: (r["latent"], r["label"], r["sample"]))
        trials = [Trial(lat, lab, k) for lat, lab in pairs for k in range(n) if (lat, lab, k) not in done]
        trials.sort(key=lambda t: t.label)  # equal prompts side by side → less padding
        ctx = _RunContext(model, tokenizer, sae, layer, proto, prompt, run, seed)
        for s in range(0, len(trials), batch_size):
            batch = trials[s:s + batch_size]
            jlog.append(ctx.run_batch(batch))
            if progress is not None:
                progress(len(batch))
    keys = {(lat, lab) for lat, lab in pairs}
    summary = summarize([r for r in jlog.rows if (r["latent"], r["label"]) in keys and r["sample"] < n])
    return {"protocol": protocol, **summary}


class _RunContext:
    """Everything one batch of trials needs; a failing batch is retried trial by trial."""

    def __init__(self, model, tokenizer, sae, layer, proto: GenerationProtocol, prompt: str, run: dict, seed: int):
        self.model, self.tokenizer, self.sae, self.layer = model, tokenizer, sae, layer
        self.proto, self.prompt, self.system, self.seed = proto, prompt, run["system"], seed
        stop = conversation_stop_ids(tokenizer, model, proto.stop_at)
        self.gen_kw = {"max_new_tokens": run["max_new_tokens"], "temperature": run["temperature"],
                       "top_p": run["top_p"], "stop_ids": stop, "special": special_token_ids(tokenizer, model),
                       "parse": proto.parse, "mask": proto.mask}

    def messages(self, label: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": self.prompt.replace(self.proto.placeholder, label)}]

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
        probe = latent_probe(self.sae, [t.latent for t in batch], device)  # bad latents fail before writing
        prompts = [encode_chat(self.tokenizer, self.messages(t.label), generation_prompt=True)[1] for t in batch]
        gens = [torch.Generator(device=device).manual_seed(derived_seed(self.seed, t.latent, t.label, t.sample))
                for t in batch]
        scored = generate_and_score(self.model, self.tokenizer, prompts, probe, self.layer, generators=gens,
                                    **self.gen_kw)
        return [{"latent": t.latent, "label": t.label, "sample": t.sample, "status": "ok", "hit": s.hit,
                 "max_act": s.max_act, "n_content": s.n_content, "first_hit": s.first_hit, "text": text}
                for t, (text, s) in zip(batch, scored)]


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

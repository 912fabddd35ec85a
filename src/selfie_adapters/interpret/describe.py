"""Describe vectors: soft tokens into the SelfIE prompt, batched generation, labels and log-probs.

The prompt is the same for every vector, so its prefix before the first injection site is run
once and its KV cache shared by the batch; rows leave the batch as soon as they finish.

Label ends (``label_end``): ``"last-quote"`` (the reference's ``strip_last_quote``, default) generates
to end-of-turn and takes the text before the last ``"``, so labels may contain quotes; ``"first-quote"``
stops a row at the first token containing ``"`` (one token sooner) and cuts there.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from transformers import DynamicCache

from ..adapters.artifact import Adapter
from ..adapters.guard import check_model
from ..errors import SelfieError
from ..files import check_finite
from ..models.loading import (
    LeftPadded,
    base_model,
    cache_kw,
    check_layers,
    eos_token_ids,
    left_pad,
    model_device,
    pad_token_id,
)
from .inject import embed_with_soft_tokens, residual_overwrite
from .template import PromptTemplate, derive_template, resolve_template, template_from_metadata

BASELINE_SCALES = (0.5, 0.8, 1.3, 2.1, 3.4, 5.5)  # the reference's geometric Llama sweep
LABEL_ENDS = ("last-quote", "first-quote")


@dataclass(frozen=True)
class Description:
    """One generated description: ``label`` is the text before the closing quote (see ``label_end``)."""

    index: int
    scale: float
    sample: int
    label: str
    text: str
    logprob: float  # mean log-prob of the generated tokens up to and including the closing one
    closed: bool  # the row ended (end-of-turn, or the quote with label_end="first-quote") within max_new_tokens
    # SelfIE's relevancy, per generated token: (token, |p(token | patched) − p(token | unpatched)|)
    relevancy: tuple[tuple[str, float], ...] | None = None

    def to_row(self) -> dict:
        row = asdict(self)
        if self.relevancy is None:
            del row["relevancy"]
        return row

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.index, self.scale, self.sample)


@dataclass(frozen=True)
class DescribeJob:
    """One description to write: vector ``row`` of the input (named ``index``) at ``scale``, sample ``sample``."""

    row: int
    index: int
    scale: float
    sample: int

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.index, self.scale, self.sample)


@dataclass(frozen=True)
class Generated:
    tokens: list[int]
    logprobs: list[float]
    closed: bool


class Interpreter:
    """A causal LM + tokenizer + adapter that turns vectors into the model's own descriptions.

    >>> interp = Interpreter(model, tokenizer, load_adapter("goodfire-sae-scalar-affine.safetensors"))
    >>> interp.describe(vectors)[0].label
    'words about fruit'
    """

    def __init__(self, model, tokenizer, adapter: Adapter | None = None, *,
                 template: PromptTemplate | str | None = None, inject_layer: int | None = None,
                 mean: torch.Tensor | None = None, allow_model_mismatch: bool = False,
                 label_end: str = "last-quote") -> None:
        self.model, self.tokenizer = model, tokenizer
        dim = model.config.hidden_size
        self.adapter = adapter if adapter is not None else Adapter.identity(dim)
        if adapter is not None:
            check_model(adapter, model, allow_model_mismatch)
            adapter.to(model_device(model))  # the transform runs where the model runs
        if inject_layer is not None:
            check_layers(model, [inject_layer], "inject_layer", "(None = replace the input embeddings)")
        self.template, trained_eos = _pick_template(tokenizer, adapter, template)
        self.prompt_ids, self.sites = self.template.encode(tokenizer)
        self.inject_layer = inject_layer
        if mean is not None:
            if mean.shape != (dim,):
                raise SelfieError(f"mean vector has shape {tuple(mean.shape)}, expected ({dim},)")
            check_finite(mean, "mean vector")
        self.mean = None if mean is None else mean.float()
        self.label_end = check_label_end(label_end)
        self.eos_ids = eos_token_ids(tokenizer, model)
        if trained_eos in tokenizer.get_vocab():  # the end-of-turn token the adapter was trained to emit
            self.eos_ids.add(tokenizer.get_vocab()[trained_eos])
        stops = stop_token_ids(tokenizer, self.template.closing) if label_end == "first-quote" else set()
        self.stop_ids = sorted(stops | self.eos_ids)

    @property
    def default_scales(self) -> tuple[float, ...]:
        return BASELINE_SCALES if self.adapter.kind == "identity" else (1.0,)

    def soft_tokens(self, vectors: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """(N, d) vectors → (N, d) fp32 soft tokens: adapter(scale · x̂), x̂ = (v − mean)/‖v − mean‖.

        As in the reference's evals, the scale multiplies the adapter's (normalised) input and the
        adapter's own normalisation is off, so a trained bias is not scaled. For the identity this
        is ``scale · x̂``. An adapter with ``normalize_input`` false gets ``scale · (v − mean)``.
        ``scale`` may be one number or one per row, shape (N,).
        """
        return self.adapter.scaled_transform(self._centred(vectors), scale)

    def _centred(self, vectors: torch.Tensor) -> torch.Tensor:
        v = vectors.float()
        return v if self.mean is None else v - self.mean.to(v.device)

    def describe(self, vectors: torch.Tensor, **kwargs) -> list[Description]:
        """All descriptions at once; see ``iter_describe`` for the arguments."""
        return [d for batch in self.iter_describe(vectors, **kwargs) for d in batch]

    def iter_describe(self, vectors: torch.Tensor, *, scales: Sequence[float] | None = None, samples: int = 1,
                      max_new_tokens: int = 40, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                      batch_size: int = 32, skip: Iterable[tuple[int, float, int]] = (),
                      indices: Sequence[int] | None = None, relevancy: bool = False,
                      progress: Callable[[int], None] | None = None) -> Iterator[list[Description]]:
        """Yield one list of descriptions per batch (vectors × scales × samples), for incremental writing.

        ``temperature`` 0 is greedy; sampling is seeded per (index, scale, sample), so results do not
        depend on batch size or on what was skipped. ``skip`` holds keys already done (resume);
        ``indices`` names the rows (default 0..N-1). ``relevancy`` adds SelfIE's per-token relevancy
        (one extra teacher-forced pass over the unpatched prompt per batch).
        """
        vectors = _as_matrix(vectors, self.model.config.hidden_size)
        indices = list(range(len(vectors))) if indices is None else list(indices)
        scales = tuple(float(s) for s in (scales or self.default_scales))
        done = set(skip)
        jobs = [job for row in range(len(vectors)) for s in scales for k in range(samples)
                if (job := DescribeJob(row, indices[row], s, k)).key not in done]
        todo = sorted({job.row for job in jobs})
        where = {row: u for u, row in enumerate(todo)}
        base = self.adapter.prepare(self._centred(vectors[todo])) if jobs else None  # (U, d): x̂ once per vector
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            rows = torch.tensor([where[job.row] for job in batch], device=base.device)
            scale = torch.tensor([job.scale for job in batch], dtype=torch.float32, device=base.device)
            soft = self.adapter.transform(scale[:, None] * base[rows], normalize_input=False).float()  # (b, d)
            gens = None
            if temperature > 0:
                device = model_device(self.model)
                gens = [torch.Generator(device=device).manual_seed(derived_seed(seed, *job.key)) for job in batch]
            outs = generate(self.model, [self.prompt_ids] * len(batch), [self.sites] * len(batch), soft,
                            inject_layer=self.inject_layer, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_p=top_p, generators=gens,
                            stop_ids=self.stop_ids, pad_id=pad_token_id(self.tokenizer))
            rel = self._relevancy(outs) if relevancy else [None] * len(outs)
            yield [self._describe_one(job, out, r) for job, out, r in zip(batch, outs, rel)]
            if progress is not None:
                progress(len(batch))

    def _describe_one(self, job: DescribeJob, out: Generated, relevancy=None) -> Description:
        text_ids = [t for t in out.tokens if t not in self.eos_ids]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False)
        label = extract_label(text, self.template.closing, self.label_end)
        lp = sum(out.logprobs) / max(len(out.logprobs), 1)
        return Description(job.index, job.scale, job.sample, label, text, lp, out.closed, relevancy)

    @torch.inference_mode()
    def _relevancy(self, outs: list[Generated]) -> list[tuple[tuple[str, float], ...]]:
        """|p(t | patched) − p(t | unpatched)| per generated token t; the unpatched run is the same
        prompt with the injection token's own embedding, teacher-forced on the generated tokens."""
        P, device = len(self.prompt_ids), model_device(self.model)
        L = max(len(o.tokens) for o in outs)
        ids = torch.full((len(outs), P + L), pad_token_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, o in enumerate(outs):  # right padding: causal attention keeps real tokens exact
            ids[b, :P + len(o.tokens)] = torch.tensor(self.prompt_ids + o.tokens)
            mask[b, :P + len(o.tokens)] = 1
        hidden = base_model(self.model)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        head = self.model.get_output_embeddings()
        result = []
        for b, o in enumerate(outs):  # logits only where a generated token is predicted: (n, V) per row
            n = len(o.tokens)
            probs = head(hidden[b, P - 1:P - 1 + n]).float().softmax(-1)
            unpatched = probs.gather(1, torch.tensor(o.tokens, device=probs.device)[:, None])[:, 0].tolist()
            result.append(tuple((self.tokenizer.decode([t]), abs(math.exp(lp) - q))
                                for t, lp, q in zip(o.tokens, o.logprobs, unpatched)))
        return result


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
    with injected_embeddings(model, batch.ids[:, start:], site_mask[:, start:], soft, inject_layer) as embeds:
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.positions[:, start:],
                    use_cache=True, logits_to_keep=1, **cache_kw(model, cache))
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


def check_label_end(label_end: str) -> str:
    if label_end not in LABEL_ENDS:
        raise SelfieError(f"label_end must be one of {', '.join(LABEL_ENDS)}, got {label_end!r} "
                          "(--label-end last-quote | first-quote)")
    return label_end


def extract_label(text: str, closing: str = '"', label_end: str = "last-quote") -> str:
    """The label in a generation: text before the last (or first) closing quote, whitespace-trimmed;
    the whole text when there is no quote (as the reference does).

    >>> extract_label('Use of "takes place" in text"')
    'Use of "takes place" in text'
    """
    if closing not in text:
        return text.strip()
    if label_end == "first-quote":
        return text.split(closing, 1)[0].strip()
    return text.rsplit(closing, 1)[0].strip()


def stop_token_ids(tokenizer, closing: str = '"') -> set[int]:
    """Ids of every token whose text contains the closing quote (e.g. ``"`` and ``."``)."""
    vocab = tokenizer.get_vocab()
    ids = {i for t, i in vocab.items() if closing in t}
    byte_tok = f"<0x{ord(closing):02X}>" if len(closing) == 1 else None
    if byte_tok in vocab:
        ids.add(vocab[byte_tok])
    return ids


def derived_seed(*parts) -> int:
    """A stable 56-bit seed from (seed, item keys...), so sampling never depends on batching or order."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _pick_template(tokenizer, adapter: Adapter | None,
                   template: PromptTemplate | str | None) -> tuple[PromptTemplate, str | None]:
    """The prompt: the one given, else the one the adapter was trained with, else the model family's."""
    trained, eos = template_from_metadata(adapter.metadata) if adapter is not None else (None, None)
    if isinstance(template, str):
        return resolve_template(tokenizer, template), eos
    return template or trained or derive_template(tokenizer), eos


def _as_matrix(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2 or vectors.shape[-1] != dim:
        raise SelfieError(f"vectors must have shape (N, {dim}) for this model, got {tuple(vectors.shape)}")
    check_finite(vectors, "vectors")
    return vectors

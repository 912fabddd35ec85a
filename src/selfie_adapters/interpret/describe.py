"""Describe vectors: soft tokens into the SelfIE prompt, batched generation (``generate``), labels and log-probs.

The prompt is the same for every vector, so its prefix before the first injection site is run
once and its KV cache shared by the batch; rows leave the batch as soon as they finish. Where a
label ends is ``label_end`` (see ``label_text``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from ..adapters.artifact import Adapter
from ..adapters.guard import check_model
from ..errors import SelfieError
from ..files import check_finite
from ..models.tokens import describe_stop_ids, end_of_turn_token, eos_token_ids, pad_token_id
from ..models.tree import base_model, check_layers, model_device
from .generate import Generated, derived_seed, generate
from .label_text import extract_label, family_max_new_tokens, resolve_label_end
from .static_decode import StaticDecoding, generate_static
from .template import PromptTemplate, choose_template

BASELINE_SCALES = (0.5, 0.8, 1.3, 2.1, 3.4, 5.5)  # the reference's geometric Llama sweep


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
class DescribeItem:
    """One description to write: vector ``row`` of the input (named ``index``) at ``scale``, sample ``sample``."""

    row: int
    index: int
    scale: float
    sample: int

    @property
    def key(self) -> tuple[int, float, int]:
        return (self.index, self.scale, self.sample)


class Interpreter:
    """A causal LM + tokenizer + adapter that turns vectors into the model's own descriptions.

    >>> interp = Interpreter(model, tokenizer, load_adapter("goodfire-sae-scalar-affine.safetensors"))
    >>> interp.describe(vectors)[0].label
    'words about fruit'
    """

    def __init__(self, model, tokenizer, adapter: Adapter | None = None, *,
                 template: PromptTemplate | str | None = None, injection_token: str | None = None,
                 inject_layer: int | None = None,
                 mean: torch.Tensor | None = None, allow_model_mismatch: bool = False,
                 label_end: str = "auto", fast_decode: bool | None = None,
                 cuda_graphs: bool | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        # the static-cache path (interpret/static_decode.py); None: on where the model is on CUDA
        on_cuda = model_device(model).type == "cuda"
        self.fast_decode = on_cuda if fast_decode is None else fast_decode
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        self._decoding: StaticDecoding | None = None
        dim = model.config.hidden_size
        self.adapter = adapter if adapter is not None else Adapter.identity(dim)
        if adapter is not None:
            check_model(adapter, model, allow_model_mismatch)
            adapter.to(model_device(model))  # the transform runs where the model runs
        if inject_layer is not None:
            check_layers(model, [inject_layer], "inject_layer", "(None = replace the input embeddings)")
        self.template, trained_eos = choose_template(tokenizer, template, injection_token,
                                                     adapter.metadata if adapter is not None else None)
        self.prompt_ids, self.sites = self.template.encode(tokenizer)
        self.inject_layer = inject_layer
        if mean is not None:
            if mean.shape != (dim,):
                raise SelfieError(f"mean vector has shape {tuple(mean.shape)}, expected ({dim},)")
            check_finite(mean, "mean vector")
        self.mean = None if mean is None else mean.float()
        self.label_end = resolve_label_end(label_end, adapter is not None)
        self.end_of_turn = _end_of_turn(tokenizer)  # the family, as its chat template closes a turn
        self.eos_ids = eos_token_ids(tokenizer, model, trained_eos)
        self.stop_ids = describe_stop_ids(tokenizer, self.eos_ids, self.template.closing, self.label_end)

    @property
    def default_scales(self) -> tuple[float, ...]:
        return BASELINE_SCALES if self.adapter.kind == "identity" else (1.0,)

    @property
    def default_max_new_tokens(self) -> int:
        """The model family's bound on a description (``label_text.MAX_NEW_TOKENS_BY_END_OF_TURN``)."""
        return family_max_new_tokens(self.end_of_turn)

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
                      max_new_tokens: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                      seed: int = 0, batch_size: int | None = None, skip: Iterable[tuple[int, float, int]] = (),
                      indices: Sequence[int] | None = None, relevancy: bool = False,
                      progress: Callable[[int], None] | None = None) -> Iterator[list[Description]]:
        """Yield one list of descriptions per batch (vectors × scales × samples), for incremental writing.

        ``temperature`` 0 is greedy; sampling is seeded per (index, scale, sample). ``skip`` holds keys
        already done (resume): batches are cut from the whole job list and a batch with a missing job
        runs whole (only the missing rows are yielded), so a resumed run computes every row in the same
        batch as an uninterrupted one, bit for bit. ``indices`` names the rows (default 0..N-1).
        ``relevancy`` adds SelfIE's per-token relevancy (one extra teacher-forced pass per batch).
        ``max_new_tokens`` defaults to the model family's (``default_max_new_tokens``); ``batch_size`` None:
        what fits in the GPU's free memory (``resolve_batch_size``).
        """
        vectors = _as_matrix(vectors, self.model.config.hidden_size)
        max_new_tokens = max_new_tokens or self.default_max_new_tokens
        batch_size = self.resolve_batch_size(max_new_tokens, batch_size)
        indices = list(range(len(vectors))) if indices is None else list(indices)
        scales = tuple(float(s) for s in (scales or self.default_scales))
        done = set(skip)
        jobs = [DescribeItem(row, indices[row], s, k) for row in range(len(vectors)) for s in scales
                for k in range(samples)]
        batches = [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]
        batches = [b for b in batches if any(job.key not in done for job in b)]
        todo = sorted({job.row for batch in batches for job in batch})
        where = {row: u for u, row in enumerate(todo)}
        base = self.adapter.prepare(self._centred(vectors[todo])) if todo else None  # (U, d): x̂ once per vector
        for batch in batches:
            rows = torch.tensor([where[job.row] for job in batch], device=base.device)
            scale = torch.tensor([job.scale for job in batch], dtype=torch.float32, device=base.device)
            soft = self.adapter.scaled_transform(base[rows], scale, prepared=True)  # (b, d)
            outs = self.generate_rows(batch, soft, max_new_tokens=max_new_tokens, temperature=temperature,
                                      top_p=top_p, seed=seed)
            rel = self._relevancy(outs) if relevancy else [None] * len(outs)
            found = [self._describe_one(job, out, r) for job, out, r in zip(batch, outs, rel) if job.key not in done]
            yield found
            if progress is not None:
                progress(len(found))

    def resolve_batch_size(self, max_new_tokens: int, batch_size: int | None = None) -> int:
        """``batch_size``, or (None) the rows that fit in the device's free memory now (32 on CPU)."""
        from ..engines.sizing import hf_batch_size

        return batch_size or hf_batch_size(self.model, len(self.prompt_ids) + max_new_tokens)

    def ask(self, vectors: torch.Tensor, question: str, **kwargs) -> list:
        """Answers to one question about each vector (free text, or with ``choices`` their scores);
        see ``interpret.ask.iter_ask`` for the arguments.

        >>> interp.ask(vectors, "Is {vector} a place? Answer yes or no.", choices=["yes", "no"])[0].choice
        'yes'
        """
        return [a for batch in self.iter_ask(vectors, [question], **kwargs) for a in batch]

    def iter_ask(self, vectors: torch.Tensor, questions: Sequence[str], **kwargs) -> Iterator[list]:
        """One list of :class:`~selfie_adapters.interpret.ask.Answer` (or ``ChoiceScores``) rows per batch."""
        from .ask import iter_ask

        return iter_ask(self, vectors, questions, **kwargs)

    def generate_rows(self, batch: Sequence[DescribeItem], soft: torch.Tensor, *, max_new_tokens: int,
                      temperature: float, top_p: float, seed: int) -> list[Generated]:
        """The template with ``soft[b]`` (b, d) at every site → row b's continuation; sampling is seeded by
        ``derived_seed(seed, *batch[b].key)``. The one step another backend (``engines.vllm``) replaces."""
        gens = None
        if temperature > 0:
            device = model_device(self.model)
            gens = [torch.Generator(device=device).manual_seed(derived_seed(seed, *job.key)) for job in batch]
        if self.fast_decode:
            if self._decoding is None:
                self._decoding = StaticDecoding(self.model, graphs=self.cuda_graphs)
            return generate_static(self._decoding, self.prompt_ids, self.sites, soft, inject_layer=self.inject_layer,
                                   max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   generators=gens, stop_ids=self.stop_ids)
        return generate(self.model, [self.prompt_ids] * len(batch), [self.sites] * len(batch), soft,
                        inject_layer=self.inject_layer, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, generators=gens, stop_ids=self.stop_ids, pad_id=pad_token_id(self.tokenizer))

    def _describe_one(self, job: DescribeItem, out: Generated, relevancy=None) -> Description:
        text_ids = [t for t in out.tokens if t not in self.eos_ids]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=False)  # the raw continuation
        # the label as the reference decodes it: special tokens dropped, then cut at the quote
        plain = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        label = extract_label(plain, self.template.closing, self.label_end)
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


def _end_of_turn(tokenizer) -> str | None:
    try:
        return end_of_turn_token(tokenizer)
    except SelfieError:  # no chat template and no EOS token: the family default applies
        return None


def _as_matrix(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    if vectors.dim() == 1:
        vectors = vectors[None]
    if vectors.dim() != 2 or vectors.shape[-1] != dim:
        raise SelfieError(f"vectors must have shape (N, {dim}) for this model, got {tuple(vectors.shape)}")
    check_finite(vectors, "vectors")
    return vectors

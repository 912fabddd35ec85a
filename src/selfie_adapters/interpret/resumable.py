"""Describe vectors into an owned JSONL output, resumably: the path behind `selfie describe` and the experiments.

Two layers:

* :func:`write_descriptions` appends to an open :class:`~selfie_adapters.runs.row_log.JsonlLog` every
  (index, scale, sample) row it does not hold yet. The rows come from an *engine*: anything with the
  ``Interpreter.iter_describe`` signature (vectors, scales, samples, ``skip`` keys, ``indices``,
  ``progress``, generation settings → one list of :class:`Description` per batch) and a
  ``default_scales`` attribute. The ``Interpreter`` (HF model, shared-prefix KV cache) is the engine
  today; another generation backend plugs in by offering the same two members.
* :func:`describe_source` is everything `selfie describe` does once its flags are parsed: check the
  inputs, claim OUT (its lock and recorded inputs) before any model loads, load the model, read the
  vectors (a :class:`VectorSource` or prompt states), drop zero rows, build the interpreter, write.

>>> describe_source(DescribeRun(model="toy", source=VectorSource.parse("vectors.safetensors")), "labels.jsonl")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import torch

from ..adapters.artifact import load_adapter
from ..engines.choice import check_engine
from ..errors import SelfieError
from ..files import resolve_file
from ..models.loading import load_model
from ..reconstruct.choice import ReconstructorChoice
from ..reconstruct.scorer import Scorer, add_scores, mark_best
from ..runs.fingerprint import FileInput, model_identity, sha256_text
from ..runs.row_log import JsonlLog
from ..vectors.hidden import extract_hidden_states
from ..vectors.prompts import load_prompts
from ..vectors.rows import drop_zero_rows, write_skipped
from ..vectors.source import VectorSource
from ..vectors.tensor_files import load_mean_vectors
from .describe import Description, Interpreter
from .label_text import LabelSpread, label_spread, resolve_label_end

KEY_FIELDS = ("index", "scale", "sample")  # what identifies a description row (resume skips these keys)
Progress = Callable[[int, int], Callable[[int], None] | None]  # (total rows, rows done) → per-batch callback


class DescribeEngine(Protocol):
    """What :func:`write_descriptions` needs from a generation backend (the ``Interpreter`` has it)."""

    default_scales: tuple[float, ...]

    def iter_describe(self, vectors: torch.Tensor, *, scales: Sequence[float] | None = None, samples: int = 1,
                      skip=(), indices: Sequence[int] | None = None, progress=None,
                      **generation) -> Iterator[list[Description]]: ...


def row_key(row: dict) -> tuple[int, float, int]:
    """The (index, scale, sample) key of a written description row."""
    return (row["index"], float(row["scale"]), row["sample"])


def write_descriptions(log: JsonlLog, engine: DescribeEngine, vectors: torch.Tensor, indices: Sequence[int], *,
                       scales: Sequence[float] | None = None, samples: int = 1, progress: Progress | None = None,
                       scorer=None, targets: torch.Tensor | None = None, rates: dict | None = None,
                       **generation) -> list[dict]:
    """Append the rows of ``vectors`` (named ``indices``) × scales × samples that ``log`` lacks; all its rows.

    ``scales`` default to the engine's; ``progress(total, done)`` is called once before the first batch
    and may return a callback that receives each batch's row count; ``generation``: ``max_new_tokens``,
    ``temperature``, ``top_p``, ``seed``, ``batch_size``, ``relevancy``. With a ``scorer``
    (``reconstruct.Scorer``) every row gets its round-trip score against ``targets`` (default ``vectors``;
    row i ↔ ``indices[i]``) before it is written; ``rates`` collects seconds and counts of both steps.
    """
    scales = tuple(scales or engine.default_scales)
    done = log.done_keys(row_key)
    total = len(vectors) * len(scales) * samples
    tick = progress(total, min(len(done), total)) if progress is not None else None
    stats = rates if rates is not None else {}
    stats.update({k: stats.get(k, 0) for k in ("labels", "generate_s", "scores", "score_s")})
    batches = engine.iter_describe(vectors, scales=scales, samples=samples, skip=done, indices=list(indices),
                                   progress=tick, **generation)
    where = {index: i for i, index in enumerate(indices)}
    targets = vectors if targets is None else targets
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        stats["generate_s"] += time.perf_counter() - t0
        if batch is None:
            break
        rows = [d.to_row() for d in batch]
        stats["labels"] += len(rows)
        if scorer is not None:  # scores one step after the label
            t0 = time.perf_counter()
            rows = add_scores(rows, scorer, lambda index: targets[where[index]])
            stats["score_s"] += time.perf_counter() - t0
            stats["scores"] += len(rows)
        log.append(rows)
    return log.rows


@dataclass(frozen=True)
class DescribeRun:
    """One `selfie describe`: the vectors (``source`` with ``features``, or ``prompts`` at ``layer``), the
    adapter, the prompt and the generation settings. Field defaults are the CLI's."""

    model: str
    source: VectorSource | None = None
    features: Sequence[int] | None = None  # rows of the source (required for an SAE)
    prompts: str | os.PathLike | None = None  # describe the state after block ``layer`` at each prompt's last token
    layer: int | None = None
    chat: bool = True
    adapter: str | None = None  # file or hub reference; None = the untrained baseline
    mean_vectors: str | os.PathLike | None = None
    scales: Sequence[float] | None = None
    samples: int = 1
    max_new_tokens: int | None = None  # None: the model family's (Interpreter.default_max_new_tokens)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int | None = None  # the HF engine's; None: chosen from free GPU memory (32 on CPU)
    inject_layer: int | None = None
    template: str | None = None
    injection_token: str | None = None
    allow_model_mismatch: bool = False
    relevancy: bool = False
    label_end: str = "auto"  # last-quote with an adapter, first-quote without (see label_text)
    dtype: str = "auto"
    device: str | None = None  # the HF engine's; vLLM places the model itself
    engine: str = "hf"  # "hf" (transformers, this package's generate) or "vllm" (engines.vllm)
    max_num_seqs: int | None = None  # vLLM: rows per LLM.generate (its batch); None: sized to the device
    gpu_memory_utilization: float | None = None  # vLLM: None = what is free at start minus a margin
    reconstructor: ReconstructorChoice | None = None  # score every label (text → vector round trip)
    best_of: int | None = None  # K labels per vector and scale; mark the one that reconstructs best

    def inputs(self, texts: Sequence[str] | None) -> dict:
        """What the rows depend on, as recorded beside OUT (files by content: see ``runs.fingerprint``)."""
        src = self.source
        file = src is not None and not src.is_sae
        recorded = {"model": model_identity(self.model), "dtype": self.dtype,
                "adapter": FileInput(resolve_file(self.adapter)) if self.adapter else None,
                "template": self.template, "injection_token": self.injection_token,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens, "inject_layer": self.inject_layer,
                "mean_vectors": FileInput(self.mean_vectors) if self.mean_vectors else None, "layer": self.layer,
                # old and new spellings of one source record the same
                "vectors": FileInput(src.path) if file else None, "key": src.key if file else None,
                "sae": f"{src.sae_release}/{src.sae_id}" if src is not None and src.is_sae else None,
                "prompts": sha256_text("\n".join(texts)) if texts is not None else None, "chat": self.chat,
                "relevancy": self.relevancy, "label_end": self.label_end}
        if self.engine != "hf":  # outputs written before engines existed keep their recorded inputs
            recorded["engine"] = self.engine
        if self.reconstructor is not None:  # likewise outputs written before scores existed
            recorded.update(self.reconstructor.record())
        if self.best_of is not None:
            recorded["best_of"] = self.best_of
        return recorded

    def about(self) -> dict:
        """The model and adapter as the user named them, recorded beside OUT for people and exports (not
        compared on resume: see ``runs.outputs.Record``)."""
        return {"model": self.model, "adapter": self.adapter}

    def with_defaults(self) -> DescribeRun:
        """This run with ``label_end`` "auto" resolved (it depends on whether there is an adapter only)."""
        return replace(self, label_end=resolve_label_end(self.label_end, self.adapter is not None))

    @property
    def num_samples(self) -> int:
        """Labels per vector and scale: ``best_of`` when set, else ``samples``."""
        return self.best_of or self.samples


def check_best_of(run: DescribeRun) -> None:
    """``best_of`` needs a reconstructor, K ≥ 1, sampling when K > 1, and no other ``samples``."""
    if run.best_of is None:
        return
    if run.best_of < 1:
        raise SelfieError(f"--best-of must be >= 1 (labels per vector and scale to choose among), got {run.best_of}")
    if run.reconstructor is None:
        raise SelfieError("--best-of K chooses by round-trip score; pass --reconstructor FILE (or roundtrip "
                          "--mean-vectors FILE)")
    if run.samples not in (1, run.best_of):
        raise SelfieError(f"--best-of {run.best_of} draws {run.best_of} samples per vector and scale; --samples "
                          f"{run.samples} disagrees (leave --samples out)")
    if run.best_of > 1 and run.temperature == 0:
        raise SelfieError(f"--best-of {run.best_of} needs --temperature > 0 (greedy samples are all the same), "
                          "e.g. --temperature 1")


def describe_source(run: DescribeRun, out: str | os.PathLike, *, overwrite: bool = False,
                    progress: Progress | None = None, rates: dict | None = None) -> Path:
    """Describe ``run``'s vectors into ``out`` (JSONL, one row per index × scale × sample); a rerun with the
    same inputs resumes, other inputs are refused unless ``overwrite``. Everything that can be checked
    without the model is checked before it loads. With ``run.reconstructor`` every row carries its
    round-trip score; with ``run.best_of`` the best row per vector is marked ``"best": true`` at the end.
    ``rates`` receives seconds and counts of generating and scoring."""
    run = run.with_defaults()
    check_engine(run.engine, run.model, inject_layer=run.inject_layer, relevancy=run.relevancy)
    check_best_of(run)
    loaded = run.reconstructor.check() if run.reconstructor is not None else None  # before any model loads
    with claim_run(run, out, command="describe", key_fields=KEY_FIELDS, overwrite=overwrite) as c:
        engine = open_engine(run, c.adapter, c.mean, c.model, c.tokenizer)
        targets = c.vectors.float() if c.mean is None else c.vectors.float() - c.mean  # what is described
        scorer = _scorer(run, targets, c.model, c.tokenizer, loaded) if run.reconstructor is not None else None
        write_descriptions(c.log, engine, c.vectors, c.indices, scales=run.scales, samples=run.num_samples,
                           progress=progress, scorer=scorer, targets=targets, rates=rates,
                           max_new_tokens=run.max_new_tokens, temperature=run.temperature, top_p=run.top_p,
                           seed=run.seed, batch_size=run.batch_size, relevancy=run.relevancy)
        if run.best_of is not None:
            c.log.rewrite(mark_best(c.log.rows))
    return Path(out)


@dataclass
class Claimed:
    """What :func:`claim_run` hands over: OUT's open log, the model (None for vLLM without prompts), the
    vectors to process (zero rows dropped) and their names, the adapter and the mean vector."""

    log: JsonlLog
    model: object
    tokenizer: object
    vectors: torch.Tensor
    indices: list[int]
    adapter: object
    mean: torch.Tensor | None


@contextmanager
def claim_run(run: DescribeRun, out: str | os.PathLike, *, command: str, key_fields: Sequence[str],
              overwrite: bool = False, extra_inputs: dict | None = None) -> Iterator[Claimed]:
    """Check ``run``'s inputs, claim ``out`` (lock + recorded inputs, plus ``extra_inputs``) before any model
    loads, load the model, read the vectors (a source or prompt states) and drop zero rows: the common
    start of `selfie describe` and `selfie ask`."""
    adapter = load_adapter(run.adapter) if run.adapter else None
    if (run.source is None) == (run.prompts is None):
        raise SelfieError("give exactly one vector source: --vectors FILE[#KEY], --vectors "
                          "sae-lens:RELEASE/ID [--features 0-99], or --prompts FILE --layer L")
    texts = _prompt_texts(run) if run.prompts is not None else None
    if run.source is not None:
        loaded_vectors, named = run.source.load(run.features)  # every row asked for (all of them without features)
        vectors, indices = drop_zero_rows(loaded_vectors, named, run.source.row_name)
    mean = _mean_vector(run.mean_vectors, run.layer)
    inputs = run.inputs(texts) | (extra_inputs or {})
    with JsonlLog(out, inputs, command=command, key_fields=key_fields, overwrite=overwrite,
                  about=run.about()) as log:
        model = tok = None  # the vLLM engine needs no HF model, unless for the prompts' states or scores
        if run.engine == "hf" or texts is not None or run.reconstructor is not None:
            model, tok = load_model(run.model, dtype=run.dtype, device=run.device)
        if texts is not None:  # hidden states of the prompts, after block `layer`, last token
            states = extract_hidden_states(model, tok, texts, run.layer, chat=run.chat,
                                           batch_size=run.batch_size or 32)[run.layer]
            named = list(range(len(texts)))
            vectors, indices = drop_zero_rows(states, named, "prompt state")
            if run.engine == "vllm" and run.reconstructor is None:  # vLLM needs the GPU memory; it reads the
                # embedding table itself (the scores still need the HF model)
                model = None
                release_device_memory()
        write_skipped(out, named, indices, run.source.row_name if run.source else "prompt state")
        yield Claimed(log, model, tok, vectors, list(indices), adapter, mean)


def _scorer(run: DescribeRun, targets: torch.Tensor, model, tokenizer, loaded) -> Scorer:
    """The scorer of ``--reconstructor`` (a loaded file, or the round trip built for ``targets``)."""
    rec = run.reconstructor.build(targets, model=model, loaded=loaded)
    return Scorer(model, tokenizer, rec, batch_size=run.batch_size or 64, allow_model_mismatch=run.allow_model_mismatch)


def open_engine(run: DescribeRun, adapter, mean: torch.Tensor | None, model=None, tokenizer=None) -> DescribeEngine:
    """``run.engine``'s describe engine: an :class:`Interpreter` on the HF model (loaded here unless given),
    or a :class:`~selfie_adapters.engines.vllm.VllmEngine` (which uses ``model`` only for its embeddings)."""
    settings = {"template": run.template, "injection_token": run.injection_token, "mean": mean,
                "allow_model_mismatch": run.allow_model_mismatch, "label_end": run.label_end}
    if run.engine == "vllm":
        from ..engines.vllm import VllmEngine

        return VllmEngine(run.model, adapter, dtype=run.dtype, prompt_model=model, tokenizer=tokenizer,
                          max_num_seqs=run.max_num_seqs, gpu_memory_utilization=run.gpu_memory_utilization,
                          **settings)
    if model is None:
        model, tokenizer = load_model(run.model, dtype=run.dtype, device=run.device)
    return Interpreter(model, tokenizer, adapter, inject_layer=run.inject_layer, **settings)


def release_device_memory() -> None:
    """Return what dropped tensors held to the device (torch's allocator keeps it cached otherwise), so another
    process (vLLM's engine) sees it free. Call it after the last reference to a model is gone."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prompt_texts(run: DescribeRun) -> list[str]:
    if run.layer is None:
        raise SelfieError("--prompts needs --layer L: the residual stream after block L is described")
    return load_prompts(run.prompts)


def _mean_vector(path: str | os.PathLike | None, layer: int | None) -> torch.Tensor | None:
    """The mean vector to subtract: the file's only layer, or ``layer``."""
    if path is None:
        return None
    means = load_mean_vectors(path, layer)
    if layer is None:
        if len(means) != 1:
            raise SelfieError(f"{path} holds layers {sorted(means)}; choose one with --layer")
        layer = next(iter(means))
    if layer not in means:
        raise SelfieError(f"{path} has no layer_{layer}; it holds layers {sorted(means)}")
    return means[layer]


def label_spreads(rows: Sequence[dict]) -> dict[float, LabelSpread]:
    """Per scale, how many distinct labels the distinct inputs got (sample 0: one label per input), so a
    collapsed adapter shows at once."""
    by_scale: dict[float, list[str]] = {}
    for row in rows:
        if row["sample"] == 0:
            by_scale.setdefault(float(row["scale"]), []).append(row["label"])
    return {scale: label_spread(labels) for scale, labels in sorted(by_scale.items())}

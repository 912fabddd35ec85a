"""`selfie inspect | describe | extract | mean`: thin commands over the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from ..adapters.artifact import load_adapter
from ..errors import SelfieError
from ..files import resolve_file, save_tensors
from ..interpret.describe import Interpreter
from ..interpret.label_text import check_label_end
from ..interpret.template import resolve_template
from ..models.loading import load_model
from ..runs.chunk_store import ChunkStore
from ..runs.fingerprint import FileInput, model_identity, sha256_text
from ..runs.row_log import JsonlLog
from ..vectors.hidden import extract_hidden_states, sum_hidden_states
from ..vectors.prompts import load_prompts
from ..vectors.source import VectorSource, drop_zero_rows
from ..vectors.tensor_files import load_mean_vectors, save_mean_vectors
from .app import app
from .checks import check_device, check_sampling, check_scales, check_template
from .options import (
    AllowMismatchOpt,
    DeviceOpt,
    DtypeOpt,
    InjectionTokenOpt,
    InjectLayerOpt,
    ModelOpt,
    TemplateOpt,
    parse_indices,
)
from .output import console, progress_bar

VECTORS_HELP = ("Vector source: FILE (.safetensors / .pt / .npy, shape (N, d)), FILE#KEY (one tensor of several) "
                "or sae-lens:RELEASE/ID (SAE decoder rows; with --features).")


@app.command()
def inspect(adapter: str = typer.Argument(..., help="Adapter file (.safetensors / .pt) or hub reference."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show an adapter's kind, model, dimension, parameter count and metadata.

    Example: selfie inspect goodfire-sae-scalar-affine.safetensors --json
    """
    info = load_adapter(adapter).summary()
    if as_json:
        print(json.dumps(info))
        return
    for key, value in info.items():
        if key != "config":
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False, soft_wrap=True)


@app.command()
def describe(
    model: ModelOpt,
    out: Path = typer.Option(..., help="Output JSONL; re-running with the same file resumes."),
    adapter: str | None = typer.Option(None, help="Adapter file or hub reference; none = untrained baseline."),
    scale: list[float] | None = typer.Option(None, help="Soft-token scale(s); repeat to sweep."),
    vectors: str | None = typer.Option(None, help=VECTORS_HELP),
    key: str | None = typer.Option(None, help="Tensor name inside the vectors file (same as FILE#KEY)."),
    sae_release: str | None = typer.Option(None, help="Old spelling of --vectors sae-lens:RELEASE/ID."),
    sae_id: str | None = typer.Option(None, help="With --sae-release: the SAE id, e.g. layer_19."),
    features: str | None = typer.Option(None, help="Rows to describe, e.g. '0,5,10-20' (SAE latents; "
                                        "required for an SAE)."),
    prompts: Path | None = typer.Option(None, help="Describe the state after block --layer at the last token of "
                                        "each prompt (one per line, or JSONL with \"prompt\")."),
    chat: bool = typer.Option(True, "--chat/--raw", help="With --prompts: render each prompt with the chat "
                              "template + generation prompt (default, as the reference and the published mean "
                              "vector) or as raw text with BOS (--raw)."),
    mean_vectors: Path | None = typer.Option(None, help="Mean vectors to subtract (contrastive): "
                                             "mean-vectors.safetensors or a reference ..._l{L}_mean.pt."),
    layer: int | None = typer.Option(None, help="Layer L of --prompts and of the layer_{L} mean to subtract."),
    samples: int = typer.Option(1, min=1, help="Descriptions per vector and scale."),
    max_new_tokens: int = typer.Option(40, min=1),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(32, min=1),
    inject_layer: InjectLayerOpt = None,
    template: TemplateOpt = None,
    injection_token: InjectionTokenOpt = None,
    allow_model_mismatch: AllowMismatchOpt = False,
    relevancy: bool = typer.Option(False, help="Add SelfIE's per-token relevancy |p(t|patched) − p(t|unpatched)|."),
    label_end: str = typer.Option("last-quote", help="last-quote: generate to end-of-turn, label = text "
                                       "before the last quote (reference); first-quote: stop at the first quote."),
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out instead of resuming it (needed when "
                                   "it holds other results or was computed from other inputs)."),
) -> None:
    """Describe vectors in words; writes one JSONL row per (vector, scale, sample).

    Example: selfie describe --model meta-llama/Llama-3.1-8B-Instruct
      --adapter keenanpepper/selfie-adapters-llama-3.1-8b-instruct/goodfire-sae-scalar-affine.safetensors
      --vectors sae-lens:goodfire-llama-3.1-8b-instruct/layer_19 --features 0-99 --out labels.jsonl

    Vectors come from exactly one of --vectors SOURCE (FILE, FILE#KEY or sae-lens:RELEASE/ID with
    --features) or --prompts FILE --layer L [--raw] (with --mean-vectors for contrastive adapters).
    """
    # Everything that can be checked without the model is checked first.
    scales = check_scales(scale)
    check_sampling(temperature, top_p)
    check_device(device)
    check_template(template, injection_token)
    check_label_end(label_end)
    ad = load_adapter(adapter) if adapter else None
    if sum(x is not None for x in (vectors, sae_release, prompts)) != 1:
        raise SelfieError("give exactly one vector source: --vectors FILE[#KEY], --vectors "
                          "sae-lens:RELEASE/ID --features 0-99, or --prompts FILE --layer L")
    texts = _prompts_from_options(prompts, layer) if prompts is not None else None
    source = None if texts is not None else _source_from_options(vectors, key, sae_release, sae_id, features)
    vecs, indices = (None, None) if source is None else source.load(
        parse_indices(features, "--features") if features else None)
    if source is not None and not source.is_sae:  # SAE rows drop their dead latents in load()
        vecs, indices = drop_zero_rows(vecs, indices)
    mean = _mean_from_options(mean_vectors, layer)
    inputs = {"model": model_identity(model), "dtype": dtype, "adapter": FileInput(resolve_file(adapter))
              if adapter else None, "template": template, "injection_token": injection_token,
              "temperature": temperature, "top_p": top_p, "seed": seed, "max_new_tokens": max_new_tokens,
              "inject_layer": inject_layer, "mean_vectors": FileInput(mean_vectors) if mean_vectors else None,
              "layer": layer, **_source_inputs(source),
              "prompts": sha256_text("\n".join(texts)) if texts is not None else None, "chat": chat,
              "relevancy": relevancy, "label_end": label_end}
    with JsonlLog(out, inputs, command="describe", key_fields=("index", "scale", "sample"),
                  overwrite=overwrite) as log:
        m, tok = load_model(model, dtype=dtype, device=device)
        if texts is not None:  # hidden states of the prompts, after block `layer`, last token
            vecs = extract_hidden_states(m, tok, texts, layer, chat=chat, batch_size=batch_size)[layer]
            vecs, indices = drop_zero_rows(vecs, list(range(len(texts))), "prompt state")
        prompt = resolve_template(tok, template, injection_token) if template or injection_token else None
        interp = Interpreter(m, tok, ad, template=prompt, inject_layer=inject_layer, mean=mean,
                             allow_model_mismatch=allow_model_mismatch, label_end=label_end)
        _describe_rows(log, interp, vecs, indices, scales or interp.default_scales, samples=samples,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                       batch_size=batch_size, relevancy=relevancy)
    console.print(f"wrote {out}", highlight=False)


def _describe_rows(log: JsonlLog, interp: Interpreter, vecs: torch.Tensor, indices: list[int],
                   scales: tuple[float, ...], samples: int, **kw) -> None:
    """Append the rows not yet in ``log`` batch by batch, with a progress bar."""
    done = log.done_keys(lambda r: (r["index"], float(r["scale"]), r["sample"]))
    total = len(vecs) * len(scales) * samples
    with progress_bar() as bar:
        task = bar.add_task("describing", total=total, completed=min(len(done), total))
        for batch in interp.iter_describe(vecs, scales=scales, samples=samples, skip=done, indices=indices,
                                          progress=lambda n: bar.advance(task, n), **kw):
            log.append([d.to_row() for d in batch])


def _prompts_from_options(prompts: Path, layer: int | None) -> list[str]:
    if layer is None:
        raise SelfieError("--prompts needs --layer L: the residual stream after block L is described")
    return load_prompts(prompts)


def _source_from_options(vectors: str | None, key: str | None, sae_release: str | None, sae_id: str | None,
                         features: str | None) -> VectorSource:
    """``--vectors SOURCE`` or the old spellings (``--key K``, ``--sae-release R --sae-id ID``)."""
    source = VectorSource.sae(sae_release, sae_id) if sae_release else VectorSource.parse(vectors, key)
    if source.is_sae and not features:
        raise SelfieError(f"{source} needs --features: which latents to describe (e.g. --features 0-99)")
    return source



def _source_inputs(source: VectorSource | None) -> dict:
    """The vector source as the run's recorded inputs; old and new spellings of one source record the same."""
    file = source is not None and not source.is_sae
    return {"vectors": FileInput(source.path) if file else None, "key": source.key if file else None,
            "sae": f"{source.sae_release}/{source.sae_id}" if source is not None and source.is_sae else None}


def _mean_from_options(mean_vectors: Path | None, layer: int | None) -> torch.Tensor | None:
    if mean_vectors is None:
        return None
    means = load_mean_vectors(mean_vectors, layer)
    if layer is None:
        if len(means) != 1:
            raise SelfieError(f"{mean_vectors} holds layers {sorted(means)}; choose one with --layer")
        layer = next(iter(means))
    if layer not in means:
        raise SelfieError(f"{mean_vectors} has no layer_{layer}; it holds layers {sorted(means)}")
    return means[layer]


def _chunk_job(command: str, out: Path, prompts: Path, model: str, layers: list[int], dtype: str,
               device: str | None, overwrite: bool, **settings) -> tuple[list[str], ChunkStore]:
    """Check everything, then claim OUT (see ChunkStore) before any model loads."""
    texts = load_prompts(prompts)
    if not layers:
        raise SelfieError("give at least one --layer")
    check_device(device)
    inputs = {"model": model_identity(model), "dtype": dtype, "layers": sorted(set(layers)),
              "prompts_sha256": sha256_text("\n".join(texts)), **settings}
    return texts, ChunkStore(out, inputs, command=command, overwrite=overwrite)


def _run_chunks(store: ChunkStore, name: str, total: int, chunk: int, compute) -> list[dict[str, torch.Tensor]]:
    """Run ``compute(start, stop)`` over prompt chunks, resumably, with a progress bar."""
    with progress_bar() as bar:
        task = bar.add_task(name, total=total)
        return store.run(total, chunk, compute, progress=lambda n: bar.advance(task, n))


# Options shared by `extract` and `mean`.
LayersOpt = Annotated[list[int], typer.Option("--layer", help="Residual stream after block L; repeat for several.")]
PromptsOpt = Annotated[Path, typer.Option(help="One prompt per line, or JSONL with \"prompt\".")]
ChatOpt = Annotated[bool, typer.Option("--chat/--raw", help="Render each prompt with the chat template + "
                                      "generation prompt (default: as the reference and the published mean "
                                      "vector), or as raw text with BOS (--raw).")]
BatchOpt = Annotated[int, typer.Option(min=1)]
ChunkOpt = Annotated[int, typer.Option(min=1, help="Prompts per resumable chunk (a killed run restarts at the "
                                                   "last unfinished chunk).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace --out (and its unfinished chunks) even "
                                                                "if it was computed from other inputs.")]


@app.command()
def extract(
    model: ModelOpt, layer: LayersOpt, prompts: PromptsOpt,
    out: Path = typer.Option(..., help="Output .safetensors with one (N, d) fp32 tensor per layer_{L}."),
    chat: ChatOpt = True, batch_size: BatchOpt = 8, chunk: ChunkOpt = 1024, dtype: DtypeOpt = "auto",
    device: DeviceOpt = None, overwrite: OverwriteOpt = False,
    position: list[int] | None = typer.Option(None, help="Token position(s) to read (negative = from the end; "
                                              "default: the last token). Several give (N, P, d)."),
) -> None:
    """Hidden states at the last token (or --position) of each prompt; blocks above L and the LM head never run.

    Example: selfie extract --model meta-llama/Llama-3.1-8B-Instruct --layer 19 --prompts topics.txt --chat
      --out vectors.safetensors
    """
    positions: int | list[int] = position[0] if position and len(position) == 1 else (position or -1)
    texts, store = _chunk_job("extract", out, prompts, model, layer, dtype, device, overwrite, chat=chat,
                              chunk=chunk, positions=positions)
    with store:
        if store.complete:
            console.print(f"{out} is already complete (same inputs); nothing to do", highlight=False)
            return
        m, tok = load_model(model, dtype=dtype, device=device)

        def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
            vecs = extract_hidden_states(m, tok, texts[start:stop], layer, positions=positions, chat=chat,
                                         batch_size=batch_size)
            return {f"layer_{L}": v for L, v in vecs.items()}

        parts = _run_chunks(store, "extracting", len(texts), chunk, compute)
        save_tensors({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, out,
                     {"model_name": model, "chat": str(chat).lower(), "num_prompts": str(len(texts)),
                      "positions": json.dumps(positions), **store.metadata()})
        store.finish()
    console.print(f"wrote {out}", highlight=False)


@app.command()
def mean(
    model: ModelOpt, layer: LayersOpt, prompts: PromptsOpt,
    out: Path = typer.Option(..., help="Output mean-vectors.safetensors (layer_{L} → (d,) fp32)."),
    chat: ChatOpt = True, batch_size: BatchOpt = 8, chunk: ChunkOpt = 1024, dtype: DtypeOpt = "auto",
    device: DeviceOpt = None, overwrite: OverwriteOpt = False,
) -> None:
    """Mean last-token state over a prompt set, for contrastive vectors (vector − mean).

    Example: selfie mean --model meta-llama/Llama-3.1-8B-Instruct --layer 19 --prompts tell-me-about.txt
      --chat --out mean-vectors.safetensors
    """
    texts, store = _chunk_job("mean", out, prompts, model, layer, dtype, device, overwrite, chat=chat, chunk=chunk)
    with store:
        if store.complete:
            console.print(f"{out} is already complete (same inputs); nothing to do", highlight=False)
            return
        m, tok = load_model(model, dtype=dtype, device=device)

        def compute(start: int, stop: int) -> dict[str, torch.Tensor]:  # fp64 sums per chunk
            sums = sum_hidden_states(m, tok, texts[start:stop], layer, chat=chat, batch_size=batch_size)
            return {f"layer_{L}": s for L, s in sums.items()}

        parts = _run_chunks(store, "averaging", len(texts), chunk, compute)
        means = {L: (sum(p[f"layer_{L}"] for p in parts) / len(texts)).float() for L in sorted(set(layer))}
        save_mean_vectors(means, out, model_name=model, num_prompts=str(len(texts)), **store.metadata())
        store.finish()
    console.print(f"wrote {out}", highlight=False)

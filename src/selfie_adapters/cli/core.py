"""`selfie inspect | describe | extract | mean`: thin commands over the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..engines.choice import ENGINES
from ..threads import configure_threads
from .app import app
from .checks import check_device, check_model_name, check_sampling, check_scales, check_template
from .display import console, progress_hook
from .options import (
    LABEL_END_HELP,
    AllowMismatchOpt,
    DeviceOpt,
    DtypeOpt,
    InjectionTokenOpt,
    InjectLayerOpt,
    LabelEnd,
    ModelOpt,
    TemplateOpt,
    ThreadsOpt,
    parse_indices,
)

if TYPE_CHECKING:  # the commands import the library inside, so `selfie --help` starts without torch
    from ..interpret.label_text import LabelSpread
    from ..vectors.source import VectorSource

VECTORS_HELP = ("Vector source: FILE (.safetensors / .pt / .npy, shape (N, d)), FILE#KEY (one tensor of several), "
                "sae-lens:RELEASE/ID or a local SAE .safetensors (SAE decoder rows: every latent, or --features; "
                "dead latents skipped and listed in OUT.skipped.json).")


@app.command()
def inspect(adapter: str = typer.Argument(..., help="Adapter or reconstructor file (.safetensors / .pt) or hub "
                                         "reference."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show an adapter's (or a reconstructor's) kind, model, dimension, parameter count and metadata.

    \b
    Example: selfie inspect goodfire-sae-scalar-affine.safetensors --json
    """
    from ..adapters.artifact import load_adapter
    from ..reconstruct.artifact import is_reconstructor_file, load_reconstructor

    info = (load_reconstructor(adapter) if is_reconstructor_file(adapter) else load_adapter(adapter)).summary()
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
    scale: list[float] | None = typer.Option(None, help="Soft-token scale(s); repeat to sweep (default: 1 with an "
                                             "adapter; the sweep 0.5 0.8 1.3 2.1 3.4 5.5 without)."),
    vectors: str | None = typer.Option(None, help=VECTORS_HELP),
    key: str | None = typer.Option(None, help="Tensor name inside the vectors file (same as FILE#KEY)."),
    sae_release: str | None = typer.Option(None, help="Old spelling of --vectors sae-lens:RELEASE/ID."),
    sae_id: str | None = typer.Option(None, help="With --sae-release: the SAE id, e.g. layer_19."),
    features: str | None = typer.Option(None, help="Rows to describe, e.g. '0,5,10-20' (SAE latents; "
                                        "default: every row)."),
    prompts: Path | None = typer.Option(None, help="Describe the state after block --layer at the last token of "
                                        "each prompt (one per line, or JSONL with \"prompt\")."),
    chat: bool = typer.Option(True, "--chat/--raw", help="With --prompts: render each prompt with the chat "
                              "template + generation prompt (default, as the reference and the published mean "
                              "vector) or as raw text with BOS (--raw)."),
    mean_vectors: Path | None = typer.Option(None, help="Mean vectors to subtract (contrastive): "
                                             "mean-vectors.safetensors or a reference ..._l{L}_mean.pt."),
    layer: int | None = typer.Option(None, help="Layer L of --prompts and of the layer_{L} mean to subtract."),
    samples: int = typer.Option(1, min=1, help="Descriptions per vector and scale."),
    max_new_tokens: int | None = typer.Option(None, min=1, help="Tokens per description (default: the model "
                                              "family's: 40 for Llama-3, 24 for ChatML and others)."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    seed: int = typer.Option(0),
    batch_size: int | None = typer.Option(None, min=1, help="HF engine: rows per forward (default: what fits in "
                                          "the GPU's free memory, at most 1024; 32 on CPU)."),
    inject_layer: InjectLayerOpt = None,
    template: TemplateOpt = None,
    injection_token: InjectionTokenOpt = None,
    allow_model_mismatch: AllowMismatchOpt = False,
    relevancy: bool = typer.Option(False, help="Add SelfIE's per-token relevancy |p(t|patched) − p(t|unpatched)|."),
    label_end: LabelEnd = typer.Option(LabelEnd("auto"), help=LABEL_END_HELP),
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    engine: str = typer.Option("hf", help=f"Generation backend: {' or '.join(ENGINES)}. vllm: a safetensors folder "
                               "or hub id (GGUF: selfie models export first), in the venv of `make setup-vllm`; "
                               "greedy labels match hf; no --inject-layer or --relevancy."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out instead of resuming it (needed when "
                                   "it holds other results or was computed from other inputs)."),
    ray: str | None = typer.Option(None, help="Run the work as shards on a Ray cluster: 'local' (start one on this "
                                   "machine), 'auto' (the cluster this machine belongs to) or HEAD:6379. Output "
                                   "identical to a single-process run."),
    workers: int | None = typer.Option(None, min=1, help="With --ray: model workers (default: one per GPU of the "
                                       "cluster, or per CPU slot)."),
    export: list[str] | None = typer.Option(None, help="Also write the finished rows as FORMAT:PATH, repeatable: "
                                            "neuronpedia:FILE (.json / .jsonl / .jsonl.gz) or delphi:FOLDER."),
    export_set: list[str] | None = typer.Option(None, help="KEY=VALUE for --export, repeatable: model_id, "
                                                "source (Neuronpedia), explanation_model, module (delphi)."),
    shard_vectors: int | None = typer.Option(None, min=1, help="With --ray: vectors per shard (rounded to whole "
                                             "batches; default: at most 256, at least one engine batch)."),
    max_num_seqs: int | None = typer.Option(None, min=1, help="--engine vllm: rows per LLM.generate, vLLM's batch "
                                            "(default: what its KV cache holds on the GPU, at most 1024; 256 on "
                                            "CPU)."),
    gpu_memory_utilization: float | None = typer.Option(None, min=0.01, max=1.0, help="--engine vllm: fraction of "
                                                        "the GPU vLLM may take (default: what is free at start "
                                                        "minus 1 GiB)."),
    threads: ThreadsOpt = None,
    reconstructor: str | None = typer.Option(None, help="Score every label by how well its vector comes back: a "
                                             "reconstructor file (selfie train-reconstructor), or 'roundtrip' "
                                             "(zero training; contrastive vectors: with --mean-vectors and --layer)."),
    best_of: int | None = typer.Option(None, help="Draw K labels per vector and scale (with --temperature > 0) and "
                                       "mark the one that reconstructs best \"best\": true (needs --reconstructor); "
                                       "K=1 with several --scale picks a scale per vector."),
) -> None:
    """Describe vectors in words; writes one JSONL row per (vector, scale, sample).

    \b
    Example: selfie describe --model meta-llama/Llama-3.1-8B-Instruct
      --adapter keenanpepper/selfie-adapters-llama-3.1-8b-instruct/goodfire-sae-scalar-affine.safetensors
      --vectors sae-lens:goodfire-llama-3.1-8b-instruct/layer_19 --features 0-99 --out labels.jsonl

    Vectors come from exactly one of --vectors SOURCE (FILE, FILE#KEY, sae-lens:RELEASE/ID or a local SAE
    file: every row, or --features) or --prompts FILE --layer L [--raw] (with --mean-vectors for contrastive
    adapters). Zero rows (dead latents) are skipped and listed in OUT.skipped.json; --export writes the
    finished rows for Neuronpedia or delphi too, e.g. --export neuronpedia:np.json --export delphi:explanations.
    """
    from ..labels.formats import parse_export, parse_export_settings, write_exports

    exports = [parse_export(spec) for spec in export or ()]  # export flags first: cheap, and no model needed
    export_overrides = parse_export_settings(export_set or ())
    check_model_name(model)  # a mistyped name fails before torch is imported
    configure_threads(threads)
    from ..files import read_jsonl
    from ..interpret.resumable import DescribeRun, describe_source, label_spreads
    from ..labels.naming import export_settings
    from ..vectors.rows import skipped_note

    # Flag values are checked here, the rest by describe_source, all before the model loads.
    scales = check_scales(scale)
    check_sampling(temperature, top_p)
    if ray is None:  # with --ray the workers have the GPUs, not necessarily this (head) node
        check_device(device)
    check_template(template, injection_token)
    source = _source_from_options(vectors, key, sae_release, sae_id)
    rows = parse_indices(features, "--features") if features and source is not None else None
    recon = None
    if reconstructor is not None:
        from ..reconstruct.choice import ReconstructorChoice

        recon = ReconstructorChoice(reconstructor, mean_vectors=mean_vectors, layer=layer, chat=chat)
    run = DescribeRun(model=model, source=source, features=rows,
                      prompts=prompts, layer=layer, chat=chat, adapter=adapter, mean_vectors=mean_vectors,
                      scales=scales, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, seed=seed, batch_size=batch_size, inject_layer=inject_layer, template=template,
                      injection_token=injection_token, allow_model_mismatch=allow_model_mismatch,
                      relevancy=relevancy, label_end=label_end.value, dtype=dtype, device=device,
                      engine=engine, max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                      reconstructor=recon, best_of=best_of)
    rates: dict = {}
    with progress_hook("describing", unit="labels") as progress:
        if ray is None:
            describe_source(run, out, overwrite=overwrite, progress=progress, rates=rates)
        else:
            from ..engines.ray_shards import describe_sharded

            describe_sharded(run, out, address=ray, num_workers=workers, threads=threads,  # per worker
                             shard_vectors=shard_vectors, overwrite=overwrite, progress=progress)
    console.print(f"wrote {out}", highlight=False)
    if (note := skipped_note(out)) is not None:
        console.print(note, style="yellow", highlight=False)
    written = read_jsonl(out, what="descriptions")
    print_label_spreads(label_spreads(written), adapter is not None)
    if recon is not None:
        print_scores(written, rates)
    if exports:
        for line in write_exports(written, exports, export_settings(out, export_overrides)):
            console.print(line, highlight=False, soft_wrap=True)


def print_label_spreads(spreads: dict[float, LabelSpread], adapter: bool) -> None:
    """One short line per scale; a warning where a few strings dominate, naming what can have caused it."""
    for scale, spread in spreads.items():
        where = f"scale {scale:g}: " if len(spreads) > 1 else ""
        console.print(f"{where}{spread.summary()}", highlight=False, soft_wrap=True)
        if spread.collapsed:
            console.print(f"warning: {where}{spread_warning(spread, adapter)}", style="yellow", highlight=False,
                          soft_wrap=True)


def spread_warning(spread: LabelSpread, adapter: bool) -> str:
    """Why a few labels dominating matters: a collapsed adapter, or (no adapter) the untrained model."""
    few = f"a few labels dominate ({spread.distinct} distinct for {spread.inputs} inputs)"
    if adapter:
        return f"{few}: the adapter may have collapsed; see docs/training.md"
    return f"{few}: the untrained model says much the same for these vectors (try other --scale values)"


def print_scores(rows: list[dict], rates: dict) -> None:
    """Mean round-trip scores (all rows; the chosen ones when marked) and labels/s next to scores/s."""
    from ..reconstruct.score_file import mean_scores

    for what, only_best in (("all labels", False), ("chosen labels", True)):
        means = mean_scores(rows, only_best=only_best)
        if means and (not only_best or any("best" in r for r in rows)):
            console.print(f"{what}: " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()), highlight=False)
    if rates.get("labels") and rates.get("scores"):
        console.print(f"{rates['labels'] / max(rates['generate_s'], 1e-9):.1f} labels/s, "
                      f"{rates['scores'] / max(rates['score_s'], 1e-9):.1f} scores/s (scoring added "
                      f"{100 * rates['score_s'] / max(rates['generate_s'], 1e-9):.0f}% to generating)", highlight=False)


def _source_from_options(vectors: str | None, key: str | None, sae_release: str | None,
                         sae_id: str | None) -> VectorSource | None:
    """``--vectors SOURCE`` or the old spellings (``--key K``, ``--sae-release R --sae-id ID``); None: no source."""
    from ..vectors.source import VectorSource

    if vectors is None and sae_release is None:
        return None
    return VectorSource.sae(sae_release, sae_id) if sae_release else VectorSource.parse(vectors, key)


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
    threads: ThreadsOpt = None,
) -> None:
    """Hidden states at the last token (or --position) of each prompt; blocks above L and the LM head never run.

    \b
    Example: selfie extract --model meta-llama/Llama-3.1-8B-Instruct --layer 19 --prompts topics.txt --chat
      --out vectors.safetensors
    """
    check_model_name(model)  # a mistyped name fails before torch is imported
    configure_threads(threads)
    from ..vectors.chunked import extract_to_file

    positions: int | list[int] = position[0] if position and len(position) == 1 else (position or -1)
    check_device(device)
    with progress_hook("extracting") as progress:
        wrote = extract_to_file(out, model, prompts, layer, positions=positions, chat=chat, batch_size=batch_size,
                                chunk=chunk, dtype=dtype, device=device, overwrite=overwrite, progress=progress)
    _report(out, wrote)


@app.command()
def mean(
    model: ModelOpt, layer: LayersOpt, prompts: PromptsOpt,
    out: Path = typer.Option(..., help="Output mean-vectors.safetensors (layer_{L} → (d,) fp32)."),
    chat: ChatOpt = True, batch_size: BatchOpt = 8, chunk: ChunkOpt = 1024, dtype: DtypeOpt = "auto",
    device: DeviceOpt = None, overwrite: OverwriteOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Mean last-token state over a prompt set, for contrastive vectors (vector − mean).

    \b
    Example: selfie mean --model meta-llama/Llama-3.1-8B-Instruct --layer 19 --prompts tell-me-about.txt
      --chat --out mean-vectors.safetensors
    """
    check_model_name(model)  # a mistyped name fails before torch is imported
    configure_threads(threads)
    from ..vectors.chunked import mean_to_file

    check_device(device)
    with progress_hook("averaging") as progress:
        wrote = mean_to_file(out, model, prompts, layer, chat=chat, batch_size=batch_size, chunk=chunk, dtype=dtype,
                             device=device, overwrite=overwrite, progress=progress)
    _report(out, wrote)


def _report(out: Path, wrote: bool) -> None:
    if wrote:
        console.print(f"wrote {out}", highlight=False)
    else:
        console.print(f"{out} is already complete (same inputs); nothing to do", highlight=False)

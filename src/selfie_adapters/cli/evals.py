"""`selfie eval retrieval | generation | bridge`: thin commands over ``selfie_adapters.evals``."""
# ruff: noqa: B008  (typer declares options as call defaults)

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import SelfieError
from ..evals.conversations import GENERATION_PROTOCOLS as GEN
from ..evals.protocols import (
    BRIDGE_PROTOCOLS as BRIDGE,
)
from ..evals.protocols import (
    REFERENCE_STRATEGY_NAMES,
    RETRIEVAL_PROTOCOLS,
    STRATEGIES,
    defaults_help,
    protocols_help,
)
from ..threads import configure_threads
from .app import eval_app
from .checks import check_device, check_model_name, check_sampling, check_scales
from .display import print_table, progress_bar
from .options import DeviceOpt, DtypeOpt, ModelOpt, ThreadsOpt, choices, parse_indices

if TYPE_CHECKING:  # the commands import the library inside, so `selfie --help` starts without torch
    from ..vectors.source import VectorSource

RetrievalName = choices("RetrievalName", RETRIEVAL_PROTOCOLS)
GenerationName = choices("GenerationName", GEN)
BridgeName = choices("BridgeName", BRIDGE)

def _emit_json(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")


@eval_app.command()
def retrieval(
    labels: Path = typer.Option(..., help="Labels JSONL (e.g. `selfie describe` output): label + id or index."),
    topics: Path = typer.Option(..., help="Topics JSONL: {\"id\", \"title\", \"labels\": [...]} per line."),
    protocol: RetrievalName = typer.Option("default", help=protocols_help(RETRIEVAL_PROTOCOLS) + "."),
    model: str | None = typer.Option(None, help="sentence-transformers model (default: offline all-MiniLM-L6-v2; "
                                     "reference protocol and the paper: thenlper/gte-large)."),
    strategy: str | None = typer.Option(None, help=f"Topic index: {', '.join(STRATEGIES)} (or the "
                                        "reference's names) [default title; reference title+labels]."),
    out: Path | None = typer.Option(None, help="Write the JSON report here."),
    cache_dir: Path | None = typer.Option(None, help="Topic-index cache (default ~/.cache/selfie-adapters)."),
    device: str | None = typer.Option(None, help="Embedding device: cpu, cuda, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    threads: ThreadsOpt = None,
) -> None:
    """Rank every topic for each label by embedding similarity; recall@k and MRR.

    \b
    Example: selfie eval retrieval --labels labels.jsonl --topics topics.jsonl --out retrieval.json
    """
    configure_threads(threads)
    from ..evals import retrieval as ret_mod
    from ..files import write_json
    from ..runs.outputs import check_output_path

    protocol = protocol.value
    proto = RETRIEVAL_PROTOCOLS[protocol]
    strategy = REFERENCE_STRATEGY_NAMES.get(strategy, strategy) or proto.strategy
    model = model or proto.model
    if strategy not in STRATEGIES:
        raise SelfieError(f"unknown --strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if out is not None:  # a folder, FIFO or link at --out is refused before the work, not after it
        check_output_path(out)
    ts = ret_mod.load_topics(topics)
    rows = ret_mod.load_labels(labels, ts)
    report = ret_mod.retrieval_eval(rows, ts, model=model, strategy=strategy, cache_dir=cache_dir, device=device,
                                    protocol=protocol)
    if out is not None:
        write_json(out, report)
    if as_json:
        _emit_json(report)
        return
    cols, table = ret_mod.summary_rows(report)
    print_table(f"topic retrieval ({protocol} protocol) — {report['n_labels']} labels, {report['n_topics']} topics, "
                f"{model}, index {strategy}", cols, table)


@eval_app.command()
def generation(
    model: ModelOpt,
    out: Path = typer.Option(..., help="Trial rows (JSONL); re-running with the same file resumes."),
    sae: str | None = typer.Option(None, help="The SAE: sae-lens:RELEASE/ID, or a local .safetensors with "
                                   "W_enc, b_enc, b_dec[, threshold]."),
    sae_release: str | None = typer.Option(None, help="Old spelling of --sae sae-lens:RELEASE/ID."),
    sae_id: str | None = typer.Option(None, help="With --sae-release: the SAE id, e.g. layer_19."),
    sae_file: Path | None = typer.Option(None, help="Old spelling of --sae FILE."),
    layer: int | None = typer.Option(None, help="Block whose output the SAE reads (default: from the SAE)."),
    labels: Path | None = typer.Option(None, help="Labels JSONL with latent (or index) + label."),
    adapter: str | None = typer.Option(None, help="Write labels on the fly with this adapter (needs --latents)."),
    latents: str | None = typer.Option(None, help="Latents for --adapter, e.g. '0-99'."),
    label_samples: int = typer.Option(1, min=1, help="Labels per latent written by --adapter."),
    protocol: GenerationName = typer.Option("default", help=protocols_help(GEN) + ". Options below override it."),
    samples: int | None = typer.Option(None, min=1, help="Conversations per (latent, label) "
                                       f"{defaults_help(GEN, 'samples')}."),
    prompt: str | None = typer.Option(None, help="User message; {label} (reference: _) is replaced."),
    system: str | None = typer.Option(None, help="System message [default none; reference: its [USER]/[ASSISTANT] "
                                      "format message]."),
    max_new_tokens: int | None = typer.Option(None, min=1, help=defaults_help(GEN, "max_new_tokens")),
    temperature: float | None = typer.Option(None, min=0.0, help=defaults_help(GEN, "temperature")),
    top_p: float | None = typer.Option(None, min=0.0, max=1.0, help=defaults_help(GEN, "top_p")),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(8, min=1),
    report: Path | None = typer.Option(None, help="JSON report (default: OUT with .report.json)."),
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    threads: ThreadsOpt = None,
) -> None:
    """Generation scoring: conversations written about each label; hit = the latent fires on content.

    The latent is read on the written conversation alone (rendered with the chat template), not in the
    context of the instruction that named the label; --protocol reference reads every token after BOS
    as the reference implementation does (its published hit rates).

    \b
    Example: selfie eval generation --model meta-llama/Llama-3.1-8B-Instruct
      --sae sae-lens:goodfire-llama-3.1-8b-instruct/layer_19 --labels labels.jsonl --out gen.jsonl
    """
    configure_threads(threads)
    from ..runs.outputs import check_output_path

    protocol = protocol.value
    proto = GEN[protocol]
    check_sampling(temperature, top_p)
    check_device(device)
    check_output_path(out)
    if report is not None:
        check_output_path(report, "--report")
    if (labels is None) == (adapter is None):
        raise SelfieError("give exactly one label source: --labels FILE or --adapter PATH --latents 0-99")
    if adapter is not None and latents is None:
        raise SelfieError("--adapter writes labels for --latents; add e.g. --latents 0-99")
    indices = parse_indices(latents, "--latents") if latents is not None else None
    check_model_name(model)  # flag values first, then the model's name, then the heavy imports
    from ..adapters.artifact import load_adapter
    from ..evals import generation as gen_mod
    from ..evals.sae_probe import open_sae
    from ..files import read_jsonl, write_json
    from ..interpret.describe import Interpreter
    from ..models.loading import load_model

    pairs = gen_mod.parse_label_rows(read_jsonl(labels, what="labels"), str(labels)) if labels else None
    sae_model = open_sae(_sae_source(sae, sae_release, sae_id, sae_file), layer)
    m, tok = load_model(model, dtype=dtype, device=device)
    if pairs is None:
        interp = Interpreter(m, tok, load_adapter(adapter))
        pairs = gen_mod.labels_from_adapter(interp, sae_model, indices, samples=label_samples, seed=seed,
                                            **proto.label_settings(label_samples))
    samples = samples or proto.samples
    total = len(pairs) * samples
    done = min(total, sum(1 for line in out.open() if line.strip())) if out.is_file() else 0  # resumed trials
    with progress_bar() as bar:
        task = bar.add_task("scoring", total=total, completed=done)
        summary = gen_mod.generation_eval(m, tok, sae_model, pairs, out, layer=layer, protocol=protocol,
                                          samples=samples, prompt=prompt, system=system,
                                          max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                          seed=seed, batch_size=batch_size,
                                          progress=lambda n: bar.advance(task, n))
    write_json(report or out.with_suffix(".report.json"), summary)
    if as_json:
        _emit_json(summary)
        return
    lo, hi = summary["mean_hit_rate_ci95"]
    print_table(f"generation scoring ({protocol} protocol) — {summary['n_latents']} latents, "
                f"{summary['n_trials']} trials ({summary['n_failed']} failed)", ["metric", "value"],
                [["mean-max hit rate (best label per latent)", summary["mean_max_hit_rate"]],
                 ["held-out best-label hit rate", summary["heldout_best_label_hit_rate"]],
                 ["mean hit rate (all labels)", summary["mean_hit_rate"]],
                 ["  95% bootstrap CI", f"{lo:.3f} – {hi:.3f}"]])


def _sae_source(sae: str | None, release: str | None, sae_id: str | None, sae_file: Path | None) -> VectorSource:
    """``--sae SOURCE`` or the old spellings (``--sae-release R --sae-id ID``, ``--sae-file FILE``)."""
    from ..vectors.source import VectorSource

    given = [flag for flag, v in (("--sae", sae), ("--sae-release", release), ("--sae-file", sae_file)) if v]
    if len(given) != 1:
        raise SelfieError(f"which SAE? give one of --sae sae-lens:RELEASE/ID or --sae SAE.safetensors "
                          f"(got {', '.join(given) or 'none'})")
    if release:
        return VectorSource.sae(release, sae_id)
    return VectorSource.parse(sae or sae_file)


@eval_app.command()
def bridge(
    model: ModelOpt,
    records: Path = typer.Option(..., help="TwoHopFact-style JSONL: question (or r1_template + e1_value), "
                                 "e2_value, e2_aliases."),
    out_dir: Path = typer.Option(Path("bridge"), help="Folder for RECORD.json + RECORD.png per question."),
    adapter: str | None = typer.Option(None, help="Adapter file; none = untrained baseline."),
    layers: str | None = typer.Option(None, help="Layers, e.g. '0-31' (default: all)."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N records."),
    protocol: BridgeName = typer.Option("default", help=protocols_help(BRIDGE) + "."),
    samples: int | None = typer.Option(None, min=1, help="Descriptions per (layer, token) and scale "
                                       f"{defaults_help(BRIDGE, 'samples')}."),
    scale: list[float] | None = typer.Option(None, help="Soft-token scale(s) untrained "
                                             f"{defaults_help(BRIDGE, 'untrained_scale')}."),
    temperature: float | None = typer.Option(None, min=0.0, help=defaults_help(BRIDGE, "temperature")),
    max_new_tokens: int | None = typer.Option(None, min=1, help=defaults_help(BRIDGE, "max_new_tokens")),
    seed: int = typer.Option(0),
    batch_size: int = typer.Option(64, min=1),
    chat: bool = typer.Option(True, "--chat/--raw", " /--no-chat", help="Render the question with the chat template "
                              "(--raw: plain text with BOS)."),
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    threads: ThreadsOpt = None,
) -> None:
    """Bridge entities: describe every (layer, question token) state; heatmap of alias hits.

    \b
    Example: selfie eval bridge --model meta-llama/Llama-3.1-8B-Instruct --adapter A.safetensors
      --records twohop.jsonl --limit 5 --layers 0-31 --samples 4 --out-dir bridge/
    """
    check_model_name(model)  # a mistyped name fails before torch is imported
    configure_threads(threads)
    from ..adapters.artifact import load_adapter
    from ..evals import bridge as bridge_mod
    from ..files import read_jsonl, resolve_file
    from ..interpret.describe import Interpreter
    from ..models.loading import load_model
    from ..runs.fingerprint import FileInput, model_identity

    protocol = protocol.value
    rows = read_jsonl(records, what="records")[:limit]
    for r in rows:  # validate every record before loading the model
        bridge_mod.question_of(r), bridge_mod.aliases_of(r)
    layer_list = parse_indices(layers, "--layers") if layers else None
    scale = list(check_scales(scale) or ()) or None
    check_sampling(temperature, 1.0)
    check_device(device)
    ad = load_adapter(adapter) if adapter else None

    def interpreter() -> Interpreter:  # loads the model, only if some record is not done yet
        return Interpreter(*load_model(model, dtype=dtype, device=device), ad)

    settings = {"model": model_identity(model), "dtype": dtype,  # inputs by content, not by path string
                "adapter": FileInput(resolve_file(adapter)) if adapter else None, "layers": layers,
                "samples": samples, "scale": scale, "temperature": temperature, "max_new_tokens": max_new_tokens,
                "seed": seed, "chat": chat, "protocol": protocol}
    summary = bridge_mod.bridge_records(rows, out_dir, interpreter, settings=settings, layers=layer_list,
                                        samples=samples, scales=scale, temperature=temperature,
                                        max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, chat=chat,
                                        protocol=protocol)
    if as_json:
        _emit_json({"protocol": protocol, "records": summary})
        return
    print_table(f"bridge entities ({protocol} protocol)",
                ["record", "bridge", "max cell", "layer", "token", "heatmap"],
                [[s["record"], s["bridge"], s["max_score"], s["best_layer"], repr(s["best_token"]), s["png"]]
                 for s in summary])

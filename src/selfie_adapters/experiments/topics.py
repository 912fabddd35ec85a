"""The topic experiment on any model: can a trained adapter make the model name held-out topics?

Per layer L: vector = last-token state after block L of the chat prompt ``Tell me about {title}.``
minus the topic-set mean; topics are split (held-out topics are never trained on); each adapter kind
is trained with the project's trainer on ``vector → title``; held-out topics are described; each
description is scored with topic retrieval against the held-out titles (recall@1/10, MRR), next to
the untrained baseline at its best scale (chosen on the held-out set, which flatters the baseline).

Every stage leaves files behind and is skipped when its file exists, so a killed run resumes.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ..adapters.artifact import load_adapter
from ..errors import SelfieError, first_line
from ..evals.retrieval import DEFAULT_MODEL, Topic, retrieval_eval, sentence_embedder
from ..files import open_text, read_jsonl, read_safetensors, save_tensors, write_json
from ..interpret.describe import Interpreter
from ..interpret.resumable import KEY_FIELDS, write_descriptions
from ..models.loading import load_model
from ..models.tree import check_layers, embedding_norm
from ..runs.chunk_store import ChunkStore
from ..runs.row_log import JsonlLog
from ..training.data import write_labels_json
from ..vectors.hidden import contrastive, extract_hidden_states
from ..vectors.prompts import load_prompts

PROMPT = "Tell me about {title}."
DEFAULT_TOPICS = "vital-articles-3000.txt"  # package data: 3,000 Wikipedia level-5 vital-article titles
EXAMPLES = 12  # held-out topics shown with every method's description in the report
BASELINE_MULTIPLES = (0.5, 1.0, 2.0, 4.0, 8.0)  # untrained scales, in units of the mean embedding norm


@dataclass
class TopicsConfig:
    """Settings of one run (all recorded in report.json)."""

    model: str = "smollm2-135m-instruct"
    topics_file: str | None = None  # .txt (one title a line) or .jsonl ({"title": ...}); None = package data
    num_topics: int = 1000  # topics drawn (seeded) from the file; 0 = all
    heldout: int = 200
    layers: Sequence[int] = (18,)
    kinds: Sequence[str] = ("scalar_affine", "full_rank")
    steps: int = 150
    batch_size: int = 32
    learning_rate: float = 1e-2
    rank: int = 16
    init_scale: float | None = None  # None: the model's mean input-embedding norm
    autocast: str | None = None  # "bfloat16": train with the frozen blocks under autocast (about 2x on CPU)
    max_new_tokens: int = 16
    seed: int = 0
    embedder: str = DEFAULT_MODEL
    score: bool = True  # False: describe only (score later, e.g. where sentence-transformers is)
    device: str | None = None  # None: cuda when available, else cpu
    extract_batch_size: int = 32
    extra: dict = field(default_factory=dict)  # free-form notes recorded in the report


def load_topic_titles(path: str | None) -> list[str]:
    """Titles from a text file (one a line), JSONL (``{"title": ...}`` rows), or JSON (a list of titles or
    ``{"titles": [...]}``, optionally ``.gz``, as the 50,006-title vital-articles list); the packaged
    3,000-title sample when ``path`` is None."""
    if path is None:
        text = resources.files("selfie_adapters.experiments").joinpath("data", DEFAULT_TOPICS).read_text("utf-8")
        return [t for t in text.splitlines() if t.strip()]
    p = Path(path)
    if p.name.endswith((".json", ".json.gz")):
        with open_text(p) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise SelfieError(f"{p.name}: not valid JSON ({e.msg})") from None
        titles = data.get("titles") if isinstance(data, dict) else data
        if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
            raise SelfieError(f"{p.name}: needs a JSON list of title strings or {{\"titles\": [...]}}")
        return titles
    if p.suffix == ".jsonl":
        rows = read_jsonl(p, what="topics")
        bad = [n for n, r in enumerate(rows) if not isinstance(r.get("title"), str)]
        if bad:
            raise SelfieError(f"{p.name} row {bad[0]}: needs a string 'title'")
        return [r["title"] for r in rows]
    return load_prompts(p)


def choose_topics(titles: Sequence[str], cfg: TopicsConfig) -> tuple[list[str], list[int], list[int]]:
    """(topics, train rows, held-out rows): a seeded draw of ``num_topics`` unique titles, split by topic."""
    unique = list(dict.fromkeys(t.strip() for t in titles if t.strip()))
    rng = random.Random(cfg.seed)
    rng.shuffle(unique)
    topics = unique[:cfg.num_topics] if cfg.num_topics else unique
    if len(topics) <= cfg.heldout or cfg.heldout < 1:
        raise SelfieError(f"need more topics than --heldout {cfg.heldout} (and at least 1 held out); "
                          f"got {len(topics)} topics")
    n_train = len(topics) - cfg.heldout
    return topics, list(range(n_train)), list(range(n_train, len(topics)))


def topic_vectors(model, tok, topics: Sequence[str], layers: Sequence[int], cache: Path, model_name: str,
                  batch_size: int = 32, progress: Callable[[int], None] | None = None) -> dict[int, torch.Tensor]:
    """Contrastive vectors {L: (N, d)}: last-token state of the chat prompt minus the topic-set mean.
    Raw states are cached in ``cache`` (chunked while running, so a killed extraction resumes)."""
    layers = sorted(set(layers))
    if cache.is_file():
        states, meta = read_safetensors(cache)
        if json.loads(meta.get("topics", "[]")) == list(topics) and all(f"layer_{L}" in states for L in layers):
            return {L: contrastive(states[f"layer_{L}"]) for L in layers}
    prompts = [PROMPT.format(title=t) for t in topics]

    def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
        vecs = extract_hidden_states(model, tok, prompts[start:stop], layers, chat=True, batch_size=batch_size)
        return {f"layer_{L}": v for L, v in vecs.items()}

    # a cache for other topics is replaced; unfinished chunks of this one resume
    with ChunkStore(cache, {"model": model_name, "layers": layers, "prompts": prompts}, command="topics cache",
                    overwrite=cache.exists()) as store:
        parts = store.run(len(prompts), 256, compute, progress)
        states = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        save_tensors(states, cache, {"model_name": model_name, "topics": json.dumps(list(topics)),
                                     **store.metadata()})
        store.finish()
    return {L: contrastive(states[f"layer_{L}"]) for L in layers}


def write_labels(folder: Path, vectors: torch.Tensor, topics: Sequence[str], train: Sequence[int],
                 heldout: Sequence[int], layer: int) -> Path:
    """The trainer's labels JSON (label = title); held-out topics form its validation split."""
    return write_labels_json(folder, vectors, dict(enumerate(topics)), train, heldout, dataset_name="topics",
                             layer=layer, source="selfie experiment topics", vector_type="contrastive")


def train_kind(kind: str, cfg: TopicsConfig, labels: Path, runs: Path, model, tok) -> tuple[Path, float | None]:
    """Train one adapter kind with the project's trainer: (final adapter, held-out val loss).
    A finished run is reused; a killed one resumes from its last checkpoint."""
    from ..training.checkpoint import STATE_TENSORS
    from ..training.config import config_from_dict
    from ..training.trainer import train

    raw = {
        "seed": cfg.seed, "experiment_name": run_name(kind, cfg, labels),
        "model": {"name": cfg.model, "dtype": "float32", "enable_gradient_checkpointing": False},
        "data": {"labels_file": str(labels), "batch_size": cfg.batch_size, "strip_labels": True},
        "projection": {"type": kind, "normalize_input": True, "init_scale": cfg.init_scale,
                       "low_rank_rank": cfg.rank if "low_rank" in kind else None},
        "training": {"learning_rate": cfg.learning_rate, "max_steps": cfg.steps, "warmup_steps": 10,
                     "validation_every_n_steps": cfg.steps, "val_fraction": 1.0,
                     "checkpoint_every_n_steps": max(cfg.steps // 5, 1), "checkpoint_dir": str(runs),
                     "autocast": cfg.autocast},
        "logging": {"use_wandb": False, "log_sample_generations": 0},
    }
    run_cfg = config_from_dict(raw)
    final = run_cfg.run_dir / "final.safetensors"
    if final.is_file():
        loss = load_adapter(final).metadata.get("best_val_loss")  # validated once, at the last step
        return final, None if loss is None else float(loss)
    resume = (run_cfg.run_dir / STATE_TENSORS).is_file()  # else: start over (no state to continue)
    result = train(run_cfg, model=model, tokenizer=tok, resume=resume, overwrite=not resume)
    return result.final_path, result.final_val_loss


def run_name(kind: str, cfg: TopicsConfig, labels: Path) -> str:
    """``kind-<hash>`` of everything that shapes the adapter, so changed settings never reuse a run."""
    import hashlib

    keys = (kind, cfg.steps, cfg.batch_size, cfg.learning_rate, cfg.rank, cfg.init_scale, cfg.seed,
            hashlib.sha256(labels.read_bytes()).hexdigest())
    keys += (cfg.autocast,) if cfg.autocast else ()  # unset leaves the names of runs made before the option
    return f"{kind}-{hashlib.sha256(repr(keys).encode()).hexdigest()[:8]}"


def describe_rows(interp: Interpreter, vectors: torch.Tensor, rows: Sequence[int], path: Path,
                  scales: Sequence[float], settings: dict, max_new_tokens: int) -> list[dict]:
    """Describe ``vectors[rows]`` at each scale into a resumable JSONL; all its rows."""
    if interp.label_end != "last-quote":  # rows written before the untrained baseline stopped at the first
        settings = {**settings, "label_end": interp.label_end}  # quote were all last-quote: never mix them
    with JsonlLog(path, settings, command="experiment topics", key_fields=KEY_FIELDS) as log:
        return write_descriptions(log, interp, vectors[list(rows)], rows, scales=scales,
                                  max_new_tokens=max_new_tokens, batch_size=64)


def score(rows: Sequence[dict], topics: Sequence[str], heldout: Sequence[int], embed) -> dict:
    """Retrieval of each description against the held-out titles only (``embed`` None: not scored)."""
    if embed is None:
        return {"scale": None, "recall@1": None, "recall@10": None, "mrr": None, "n": len(rows)}
    pos = {t: k for k, t in enumerate(heldout)}
    held = [Topic(str(i), topics[i]) for i in heldout]
    labels = [{"index": pos[r["index"]], "label": r["label"], "scale": r["scale"]} for r in rows
              if "label" in r and r["index"] in pos]
    report = retrieval_eval(labels, held, embed=embed)
    best = report["best_scale"]
    return {"scale": best["scale"], "recall@1": best["recall@1"], "recall@10": best["recall@10"],
            "mrr": best["mrr"], "n": best["n"], "per_scale": {k: v["mrr"] for k, v in report["per_scale"].items()}}


def run_topics(cfg: TopicsConfig, out: Path, say: Callable[[str], None] = lambda s: None) -> dict:
    """Run everything into ``out`` (resumable); returns the report also written to ``out/report.json``."""
    t0 = time.perf_counter()
    topics, train_rows, held_rows = choose_topics(load_topic_titles(cfg.topics_file), cfg)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model(cfg.model, device=device)
    torch.manual_seed(cfg.seed)
    n_blocks = model.config.num_hidden_layers
    check_layers(model, cfg.layers, "--layers")
    norm = embedding_norm(model)
    say(f"{cfg.model}: {n_blocks} blocks, d={model.config.hidden_size}, embedding norm {norm:.3g}; "
        f"{len(train_rows)} train / {len(held_rows)} held-out topics")
    vectors = topic_vectors(model, tok, topics, cfg.layers, out / "states.safetensors", cfg.model,
                            cfg.extract_batch_size)
    say(f"vectors extracted ({time.perf_counter() - t0:.0f} s)")
    embed = sentence_embedder(cfg.embedder) if cfg.score else None
    report = {"config": asdict(cfg), "topics": len(topics), "train_topics": len(train_rows),
              "heldout_topics": len(held_rows), "embedding_norm": norm, "layers": {},
              "heldout": {str(i): topics[i] for i in held_rows}}  # row → title: what --score-only scores against
    for L in cfg.layers:
        report["layers"][str(L)] = _run_layer(L, vectors[L], cfg, out / f"layer-{L}", model, tok, topics,
                                              train_rows, held_rows, norm, embed, say)
        report["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(out / "report.json", report)
    return report


def score_run(out: Path, embed=None) -> dict:
    """Score a run described with ``score=False`` (say on a GPU machine without the embedder), from its
    files alone: no model is loaded. Rewrites ``out/report.json`` and returns it."""
    path = out / "report.json"
    report, cfg = _read_report(path, out)
    if "heldout" in report:  # the held-out titles travel with the report: no topics file needed
        topics = {int(i): title for i, title in report["heldout"].items()}
        held_rows = sorted(topics)
    else:
        topics, _, held_rows = choose_topics(load_topic_titles(cfg.topics_file), cfg)
    embed = embed or sentence_embedder(cfg.embedder)
    for L, result in report["layers"].items():
        for method, m in result.items():
            if method == "examples":
                continue
            rows = read_jsonl(out / f"layer-{L}" / m["descriptions"], what="descriptions")
            m.update(score(rows, topics, held_rows, embed))
            if method == "untrained":  # the examples show the untrained labels at its best scale
                best = _at_scale(rows, m["scale"])
                for ex, i in zip(result["examples"], held_rows):
                    ex["untrained"] = best.get(i, "")
    report["config"]["score"] = True
    write_json(path, report)
    return report


def _read_report(path: Path, out: Path) -> tuple[dict, TopicsConfig]:
    """The report of a described run and its config; anything else is one error naming the file."""
    if not path.is_file():
        raise SelfieError(f"{path} not found: describe first (selfie experiment topics --no-score --out {out})")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        cfg = TopicsConfig(**report["config"])
        layers = report["layers"]
        missing = [f"layer {L} {m}" for L, r in layers.items() for m, v in r.items()
                   if m != "examples" and "descriptions" not in v]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise SelfieError(f"{path} is not a report of selfie experiment topics ({type(e).__name__}: "
                          f"{first_line(e)}); describe again with --no-score") from None
    if missing:
        raise SelfieError(f"{path} names no description file for {', '.join(missing)} (written by an older "
                          "version); rerun without --score-only to score it")
    return report, cfg


def _run_layer(L: int, vecs: torch.Tensor, cfg: TopicsConfig, folder: Path, model, tok, topics, train_rows,
               held_rows, norm: float, embed, say) -> dict:
    labels = write_labels(folder / "data", vecs, topics, train_rows, held_rows, L)
    settings = {"model": cfg.model, "layer": L, "topics": len(topics), "seed": cfg.seed}
    t = time.perf_counter()
    scales = [round(m * norm, 4) for m in BASELINE_MULTIPLES]
    untrained = folder / "untrained.jsonl"
    rows = describe_rows(Interpreter(model, tok), vecs, held_rows, untrained, scales, settings, cfg.max_new_tokens)
    result = {"untrained": {**score(rows, topics, held_rows, embed), "seconds": round(time.perf_counter() - t, 1),
                            "descriptions": untrained.name}}
    described = {"untrained": _at_scale(rows, result["untrained"]["scale"] or scales[0])}
    say(f"layer {L} untrained: {_fmt(result['untrained'])}")
    for kind in cfg.kinds:
        t = time.perf_counter()
        path, val_loss = train_kind(kind, cfg, labels, folder / "runs", model, tok)
        adapter = load_adapter(path)
        heldout = path.parent / "heldout.jsonl"
        rows = describe_rows(Interpreter(model, tok, adapter), vecs, held_rows, heldout, [1.0],
                             {**settings, "adapter": str(path)}, cfg.max_new_tokens)
        result[kind] = {**score(rows, topics, held_rows, embed), "val_loss": val_loss,
                        "num_parameters": adapter.num_parameters(), "seconds": round(time.perf_counter() - t, 1),
                        "descriptions": heldout.resolve().relative_to(folder.resolve()).as_posix()}
        described[kind] = _at_scale(rows, 1.0)
        say(f"layer {L} {kind}: {_fmt(result[kind])}")
    result["examples"] = [{"title": topics[i], **{m: d.get(i, "") for m, d in described.items()}}
                          for i in held_rows[:EXAMPLES]]
    return result


def _at_scale(rows: Sequence[dict], scale: float | None) -> dict[int, str]:
    """Topic row → label of the first sample at ``scale``."""
    return {r["index"]: r["label"] for r in rows if r.get("sample", 0) == 0 and float(r["scale"]) == float(scale)}


def _fmt(m: dict) -> str:
    if m["mrr"] is None:
        return f"described {m['n']} (not scored)"
    return f"R@1 {m['recall@1']:.3f}  R@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}  (scale {m['scale']})"

"""Bridge entities (TwoHopFact): does the state at (layer, token) of a two-hop question name the middle entity?

Every question token's residual state after block L (= HF ``hidden_states[L + 1]``) is described
``samples`` times by the interpreter; a cell's score is the fraction of its descriptions that name
the bridge entity e2 (any alias, case-insensitive, on word boundaries). Question token positions come
from the tokenizer's character offsets over the rendered prompt, never from fixed indices.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..errors import SelfieError
from ..files import remove_stale_temps, write_json
from ..models.tokens import pad_token_id
from ..models.tree import check_layers, decoder_layers
from ..runs.outputs import OutputLock, check_settings
from ..vectors.hidden import hidden_states_batch
from ..vectors.prompts import question_tokens
from .protocols import BRIDGE_PROTOCOLS, BridgeProtocol, lookup  # noqa: F401  (BridgeProtocol re-exported)
from .report import save_heatmap

QUESTION_FIELDS = ("question", "prompt", "query")


def question_of(record: dict) -> str:
    """The question text: ``question``/``prompt``/``query``, else ``r1_template`` filled with e1."""
    for key in QUESTION_FIELDS:
        if isinstance(record.get(key), str) and record[key].strip():
            return record[key]
    template = record.get("r1_template")
    if isinstance(template, str) and template.strip():
        e1 = record.get("e1_value", record.get("e1_label"))
        if "{}" in template:
            if not isinstance(e1, str):
                raise SelfieError("the record's r1_template has '{}' but no e1_value/e1_label to fill it")
            return template.replace("{}", e1)
        return template
    raise SelfieError(f"the record has no question; expected one of {', '.join(QUESTION_FIELDS)} or "
                      f"r1_template, got keys {sorted(record)}")


def aliases_of(record: dict) -> list[str]:
    """Names of the bridge entity: ``e2_value``/``e2_label`` plus ``e2_aliases`` (a list or a JSON list)."""
    names = [record.get(k) for k in ("e2_value", "e2_label")]
    extra = record.get("e2_aliases") or []
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = [extra]
    names += list(extra) if isinstance(extra, (list, tuple)) else []
    out = []
    for n in names:
        if isinstance(n, str) and n.strip() and n.strip().lower() not in {x.lower() for x in out}:
            out.append(n.strip())
    if not out:
        raise SelfieError("the record names no bridge entity; expected e2_value or e2_aliases, "
                          f"got keys {sorted(record)}")
    return out


def alias_pattern(aliases: Sequence[str]) -> re.Pattern:
    """Case-insensitive match of any alias not glued to other word characters."""
    alts = "|".join(re.escape(a) for a in sorted(aliases, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE)


def bridge_eval(interpreter, record: dict, *, layers: Sequence[int] | None = None, samples: int | None = None,
                scales: Sequence[float] | None = None, temperature: float | None = None,
                max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 64, chat: bool = True,
                protocol: str = "default") -> dict:
    """Describe every (layer, question token) state and score each cell by alias matches.

    ``protocol``: ``"default"`` (question tokens, aliases in the label) or ``"reference"`` (the reference
    script's prompt, positions, sampling and whole-text matching, see ``BRIDGE_PROTOCOLS``); arguments left
    None take the protocol's values.

    >>> rep = bridge_eval(Interpreter(model, tok, adapter), {"question": "Who is the mother of the singer "
    ...                   "of 'Superstition'?", "e2_value": "Stevie Wonder"}, layers=range(32))
    >>> rep["scores"][19]   # one row per layer, one column per question token
    """
    proto = lookup(BRIDGE_PROTOCOLS, protocol)
    samples = proto.samples if samples is None else samples
    temperature = proto.temperature if temperature is None else temperature
    max_new_tokens = max_new_tokens or proto.max_new_tokens
    if scales is None and proto.untrained_scale is not None and interpreter.adapter.kind == "identity":
        scales = [proto.untrained_scale]
    model, tok = interpreter.model, interpreter.tokenizer
    layers = check_layers(model, range(len(decoder_layers(model))) if layers is None else layers, "layers")
    if samples < 1:
        raise SelfieError(f"samples must be ≥ 1, got {samples}")
    question, aliases = question_of(record), aliases_of(record)
    ids, pos, strings = question_tokens(tok, question, chat=chat, prefix=proto.prefix, to_end=proto.to_end)
    states = hidden_states_batch(model, [ids], layers, pad_token_id(tok))  # {L: (1, T, d)}
    vectors = torch.cat([states[L][0, pos].float() for L in layers])  # (n_layers · n_pos, d), layer-major
    descs = interpreter.describe(vectors, scales=scales, samples=samples, temperature=temperature,
                                 top_p=proto.top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)
    match = alias_pattern(aliases)
    cells: list[list[str]] = [[] for _ in range(len(vectors))]
    for d in descs:
        cells[d.index].append(d.text if proto.match_on == "text" else d.label)
    P = len(pos)
    scores = [[sum(bool(match.search(x)) for x in cells[li * P + p]) / max(len(cells[li * P + p]), 1)
               for p in range(P)] for li in range(len(layers))]
    return {"protocol": protocol, "question": question, "aliases": aliases, "layers": layers, "positions": pos,
            "tokens": strings,
            "samples": samples, "scales": sorted({d.scale for d in descs}),
            "scores": scores, "max_score": max(max(r) for r in scores),
            "descriptions": [[cells[li * P + p] for p in range(P)] for li in range(len(layers))]}


def write_bridge_report(report: dict, out_dir: str | os.PathLike, name: str = "bridge") -> tuple[Path, Path]:
    """``NAME.json`` + ``NAME.png`` (heatmap: layers × question tokens) under ``out_dir``."""
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / f"{name}.json", report)
    png = save_heatmap(out_dir / f"{name}.png", report["scores"],
                       row_labels=[str(L) for L in report["layers"]],
                       col_labels=[repr(t)[1:-1] for t in report["tokens"]],
                       title=f"{report['question'][:70]}\nbridge: {report['aliases'][0]}",
                       xlabel="question token", ylabel="layer")
    return json_path, png


def bridge_records(records: Sequence[dict], out_dir: str | os.PathLike, interpreter: Callable[[], object], *,
                   settings: dict | None = None, **eval_kw) -> list[dict]:
    """``bridge_eval`` every record into ``OUT_DIR/NAME.json`` + ``.png`` and a ``summary.json``; resumable.

    A record whose JSON is already there (written with the same ``settings``) is read back, never
    recomputed; ``interpreter()`` (which loads the model) is called only when some record needs it.
    NAME is the record's ``id`` (default ``record<N>``). Returns the summary rows.
    """
    out_dir = Path(out_dir)
    names = [str(rec.get("id", f"record{n}")) for n, rec in enumerate(records)]
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise SelfieError(f"--out-dir {out_dir} is not a folder (or is a link); give a folder path")
    built: list = []

    def once():  # the interpreter (model) is built at most once, and only if a record needs it
        if not built:
            built.append(interpreter())
        return built[0]

    with OutputLock(out_dir):  # one writer per folder
        out_dir.mkdir(parents=True, exist_ok=True)  # a rerun keeps finished records (same settings only)
        remove_stale_temps(out_dir, owned=True)  # a killed run's half-written reports
        check_settings(out_dir / "settings.json", settings, any((out_dir / f"{x}.json").exists() for x in names),
                       out_dir)
        summary = [_record(out_dir, name, rec, once, eval_kw) for name, rec in zip(names, records)]
        write_json(out_dir / "summary.json", {"records": summary})
    return summary


def _record(out_dir: Path, name: str, rec: dict, interpreter: Callable[[], object], eval_kw: dict) -> dict:
    """One record's summary row; its report is read back when a previous run finished it."""
    json_path, png = out_dir / f"{name}.json", out_dir / f"{name}.png"
    if json_path.exists():
        rep = json.loads(json_path.read_text(encoding="utf-8"))
        if (rep.get("question"), rep.get("aliases")) != (question_of(rec), aliases_of(rec)):
            raise SelfieError(f"record {name!r} changed since {json_path} was written (question or answers "
                              "differ); use another --out-dir, or delete that file to score it again")
        if not png.exists():
            json_path, png = write_bridge_report(rep, out_dir, name)
    else:
        rep = bridge_eval(interpreter(), rec, **eval_kw)
        json_path, png = write_bridge_report(rep, out_dir, name)
    return _summary_row(name, rep, json_path, png)


def _summary_row(name: str, rep: dict, json_path: Path, png: Path) -> dict:
    best = max((s, L, t) for L, row in zip(rep["layers"], rep["scores"]) for s, t in zip(row, rep["tokens"]))
    return {"record": name, "question": rep["question"], "bridge": rep["aliases"][0], "max_score": best[0],
            "best_layer": best[1], "best_token": best[2], "json": str(json_path), "png": str(png)}

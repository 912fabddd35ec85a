"""Labels in other tools' formats: Neuronpedia explanation rows, delphi explanation folders.

* ``neuronpedia_rows`` / ``write_neuronpedia``: one row per (latent, label),
  ``{"modelId", "layer", "index", "description", "typeName", "explanationModelName", ...}`` — the shape
  of Neuronpedia's explanation exports (``layer`` is the source id there, e.g. ``19-resid-post-gf``;
  ``index`` a string). Written as a JSON array, or JSONL for ``.jsonl`` / ``.jsonl.gz``.
* ``write_delphi``: EleutherAI delphi's explanations folder, ``{module}_latent{index}.txt`` holding the
  explanation as a JSON string (what delphi's ``explanation_loader`` reads back).
* ``read_neuronpedia`` / ``neuronpedia_training_sections``: a Neuronpedia export (array, JSONL, gzipped
  or not) → labels, and the training-data sections this package (and the reference) train on.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SelfieError
from ..files import atomic_path, iter_jsonl, open_text, write_json, write_text
from .naming import EXPORT_FIELDS, ExportSettings

TYPE_NAME = "selfie"  # Neuronpedia's typeName of an explanation method


def best_labels(rows: Iterable[dict]) -> dict[int, str]:
    """One label per index from ``selfie describe`` rows: closed rows first, then the highest log-prob."""
    best: dict[int, tuple] = {}
    for r in rows:
        key = (bool(r.get("closed", True)), float(r.get("logprob", 0.0)))
        if str(r.get("label", "")).strip() and (r["index"] not in best or key > best[r["index"]][0]):
            best[r["index"]] = (key, r["label"])
    return {i: lab for i, (_, lab) in sorted(best.items())}


def neuronpedia_rows(rows: Iterable[dict], *, model_id: str, source: str,
                     explanation_model: str = "selfie-adapter") -> list[dict]:
    """Neuronpedia explanation rows for every distinct (index, label) of ``selfie describe`` rows.

    >>> neuronpedia_rows([{"index": 3, "label": "fruit", "scale": 1.0}], model_id="llama3.1-8b-it",
    ...                  source="19-resid-post-gf")[0]["description"]
    'fruit'
    """
    out, seen = [], set()
    for r in rows:
        label = str(r.get("label", "")).strip()
        if not label or (r["index"], label) in seen:
            continue
        seen.add((r["index"], label))
        extra = {k: r[k] for k in ("scale", "sample", "logprob") if k in r}
        out.append({"modelId": model_id, "layer": source, "index": str(r["index"]), "description": label,
                    "typeName": TYPE_NAME, "explanationModelName": explanation_model, **extra})
    if not out:
        raise SelfieError("no labels to export (every row's label is empty)")
    return out


def write_neuronpedia(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """A JSON array, or JSONL when ``path`` ends in ``.jsonl`` / ``.jsonl.gz``."""
    path = Path(path)
    if path.name.endswith(".jsonl.gz"):
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.compress(data, mtime=0))
        return path
    if path.suffix == ".jsonl":
        return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return write_json(path, list(rows))


def write_delphi(labels: dict[int, str], out_dir: str | os.PathLike, module: str) -> list[Path]:
    """``out_dir/{module}_latent{index}.txt`` per latent, the label as a JSON string (delphi's format)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SelfieError(f"{out_dir} is a file; give a folder for the delphi explanations")
    return [write_text(out_dir / f"{module}_latent{i}.txt", json.dumps(lab, ensure_ascii=False))
            for i, lab in labels.items()]


def read_neuronpedia(path: str | os.PathLike) -> list[dict]:
    """Explanation rows of a Neuronpedia export (JSON array or JSONL, optionally ``.gz``), with
    ``index`` as an int; rows without a description are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"file not found: {path}")
    with open_text(path) as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SelfieError(f"{path.name} is not valid JSON ({e})") from None
    else:
        rows = [row for _, row in iter_jsonl(text.splitlines(), path.name, what="explanations")]
    out = []
    for n, r in enumerate(rows):
        if not isinstance(r, dict) or "index" not in r:
            raise SelfieError(f"{path.name} row {n}: a Neuronpedia explanation needs 'index' and 'description', "
                              f"got {str(r)[:80]}")
        try:
            index = int(r["index"])
        except (TypeError, ValueError):
            raise SelfieError(f"{path.name} row {n}: index {r['index']!r} is not an integer") from None
        if str(r.get("description") or "").strip():
            out.append({**r, "index": index, "description": str(r["description"])})
    if not out:
        raise SelfieError(f"{path.name}: no explanations with a description")
    return out


def neuronpedia_training_sections(rows: Sequence[dict], *, dataset_name: str, layer: int,
                                  val_fraction: float = 0.1, seed: int = 42, strip: bool = True) -> list[dict]:
    """Training-data sections (the reference's labels JSON) from Neuronpedia rows: one vector entry per
    latent with all its descriptions; a seeded ``val_fraction`` of the latents is ``val``. The vectors
    come from ``data.vectors_file`` (e.g. ``sae-lens:<release>/<sae_id>``) when training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise SelfieError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_index: dict[int, list[str]] = {}
    for r in rows:
        label = r["description"].strip() if strip else r["description"]
        if label not in by_index.setdefault(r["index"], []):
            by_index[r["index"]].append(label)
    import numpy as np  # the reference's seeded draw; imported here so `selfie --help` stays light

    indices = sorted(by_index)
    val = set(np.random.RandomState(seed).choice(len(indices), int(len(indices) * val_fraction), replace=False))
    vectors = [{"index": i, "labels": by_index[i], "split": "val" if k in val else "train"}
               for k, i in enumerate(indices)]
    source = rows[0].get("modelId", "") + "/" + str(rows[0].get("layer", ""))
    return [{"metadata": {"dataset_name": dataset_name, "layer": layer, "source": f"neuronpedia:{source}",
                          "vector_type": "sae_decoder"}, "vectors": vectors}]


@dataclass(frozen=True)
class ExportFormat:
    """A target of ``selfie labels export``: ``write(describe rows, out, **settings) → written paths``;
    ``fields``: the settings (``EXPORT_FIELDS``) its files are named by."""

    name: str
    help: str
    folder: bool  # ``out`` is a folder of files (else one file)
    write: Callable[..., list[Path]]
    fields: tuple[str, ...]


def _export_neuronpedia(rows: Sequence[dict], out, *, model_id: str, source: str, explanation_model: str,
                        **_) -> list[Path]:
    return [write_neuronpedia(neuronpedia_rows(rows, model_id=model_id, source=source,
                                               explanation_model=explanation_model), out)]


def _export_delphi(rows: Sequence[dict], out, *, module: str, **_) -> list[Path]:
    return write_delphi(best_labels(rows), out, module)


EXPORT_FORMATS = {
    "neuronpedia": ExportFormat("neuronpedia", "every label", False, _export_neuronpedia,
                                ("model_id", "source", "explanation_model")),
    "delphi": ExportFormat("delphi", "the best label per latent: closed, then highest log-prob", True,
                           _export_delphi, ("module",)),
}


def export_format(name: str, flag: str = "--format") -> ExportFormat:
    """The registered export format ``name``, or an error listing them (``--format``)."""
    if name not in EXPORT_FORMATS:
        raise SelfieError(f"unknown {flag} {name!r}; choose {' or '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[name]


def parse_export(spec: str) -> tuple[ExportFormat, Path]:
    """``FORMAT:PATH`` (``describe --export``), checked before any work: ``neuronpedia:explanations.json``
    (a file: .json, .jsonl or .jsonl.gz) or ``delphi:explanations`` (a folder).

    >>> parse_export("delphi:explanations")[0].name
    'delphi'
    """
    name, sep, path = spec.partition(":")
    if not sep or not path:
        raise SelfieError(f"--export takes FORMAT:PATH, got {spec!r} (e.g. --export neuronpedia:explanations.json "
                          "or --export delphi:explanations)")
    fmt, out = export_format(name, "--export format"), Path(path)
    if fmt.folder and out.exists() and not out.is_dir():
        raise SelfieError(f"--export {spec}: {out} is a file; {fmt.name} writes a folder")
    if not fmt.folder and out.is_dir():
        raise SelfieError(f"--export {spec}: {out} is a folder; {fmt.name} writes one file (e.g. {out}/labels.json)")
    return fmt, out


def parse_export_settings(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` pairs (``describe --export-set``) → overrides of the settings ``export_settings`` reads."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in EXPORT_FIELDS:
            raise SelfieError(f"--export-set takes KEY=VALUE with KEY one of {', '.join(EXPORT_FIELDS)}; "
                              f"got {pair!r} (e.g. --export-set source=19-resid-post-gf)")
        settings[key] = value
    return settings


def write_exports(rows: Sequence[dict], exports: Sequence[tuple[ExportFormat, Path]],
                  settings: ExportSettings) -> list[str]:
    """Write ``rows`` (``selfie describe`` output) in every ``(format, path)``; one line per export written,
    after one per field that had to be invented."""
    lines = settings.invented_lines({f for fmt, _ in exports for f in fmt.fields})
    for fmt, out in exports:
        paths = fmt.write(rows, out, **settings.values)
        lines.append(f"wrote {len(paths)} {fmt.name} explanations to {out}" if fmt.folder
                     else f"wrote {fmt.name} explanations {paths[0]}")
    return lines


__all__ = ["EXPORT_FIELDS", "EXPORT_FORMATS", "ExportFormat", "ExportSettings", "best_labels", "export_format",
           "neuronpedia_rows", "neuronpedia_training_sections", "parse_export", "parse_export_settings",
           "read_neuronpedia", "write_delphi", "write_exports", "write_neuronpedia"]

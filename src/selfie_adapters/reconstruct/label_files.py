"""Any labels file → (index, label) rows to score: ours (``selfie describe`` / ``selfie ask`` JSONL with
``index`` and ``label``), a Neuronpedia export (``index``, ``description``; JSON array or JSONL, optionally
gzipped) or a delphi explanations folder (``{module}_latent{index}.txt`` holding a JSON string)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import SelfieError
from ..files import iter_jsonl, open_text
from ..labels.formats import read_neuronpedia

DELPHI_FILE = re.compile(r"_latent(\d+)\.txt$")
KEPT = ("scale", "sample", "best")  # fields of our rows carried into score rows


def read_label_rows(path: str | os.PathLike) -> tuple[str, list[dict]]:
    """(format name, rows ``{"n", "index", "label", ...}``) where ``n`` numbers the labels in file order."""
    path = Path(path)
    if path.is_dir():
        return "delphi", _number(_read_delphi(path))
    if not path.is_file():
        raise SelfieError(f"labels file not found: {path}")
    with open_text(path) as f:
        head = f.read(4096).lstrip()
    if head.startswith("{") and '"label"' in head.split("\n", 1)[0]:
        return "selfie", _number(_read_ours(path))
    rows = read_neuronpedia(path)
    return "neuronpedia", _number([{"index": r["index"], "label": r["description"]} for r in rows])


def _read_ours(path: Path) -> list[dict]:
    out = []
    with open_text(path) as f:
        for lineno, row in iter_jsonl(f, path.name, what="labels"):
            if not isinstance(row.get("index"), int) or not isinstance(row.get("label"), str):
                raise SelfieError(f"{path.name}:{lineno}: a label row needs an integer 'index' and a string "
                                  f"'label', got {str(row)[:80]}")
            out.append({"index": row["index"], "label": row["label"], **{k: row[k] for k in KEPT if k in row}})
    if not out:
        raise SelfieError(f"{path.name} holds no labels")
    return out


def _read_delphi(folder: Path) -> list[dict]:
    out = []
    for file in sorted(folder.iterdir(), key=lambda p: (len(p.name), p.name)):
        m = DELPHI_FILE.search(file.name)
        if not m:
            continue
        try:
            label = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise SelfieError(f"{file}: a delphi explanation must be a JSON string") from None
        if not isinstance(label, str):
            raise SelfieError(f"{file}: a delphi explanation must be a JSON string, got {type(label).__name__}")
        out.append({"index": int(m.group(1)), "label": label})
    if not out:
        raise SelfieError(f"{folder} holds no delphi explanations ({{module}}_latent{{index}}.txt files)")
    return sorted(out, key=lambda r: r["index"])


def _number(rows: list[dict]) -> list[dict]:
    return [{"n": n, **r} for n, r in enumerate(rows)]

"""What a result depends on, by content rather than by path string.

A resumed run must only add rows computed from the same inputs. Inputs are recorded as
fingerprints: a file by its size and SHA-256 (re-hashed only when its size or mtime changed), a
local model folder by its config, tokenizer and weight-file sizes, a hub model by its id. Two
paths to the same file (``v.safetensors`` and ``../x/v.safetensors``) have the same fingerprint;
a file replaced at the same path does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_CHUNK = 1 << 20
HEADER_BYTES = 16 << 20  # a GGUF header (architecture, tokenizer, tensor table) fits well within this


class FileInput:
    """A settings value meaning "the content of this file" (resolved by ``resolve_settings``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def file_fingerprint(path: str | os.PathLike, previous: dict | None = None) -> dict:
    """{size, mtime_ns, sha256}; the hash of ``previous`` is reused when size and mtime still match."""
    st = os.stat(path)
    if (isinstance(previous, dict) and previous.get("size") == st.st_size
            and previous.get("mtime_ns") == st.st_mtime_ns and isinstance(previous.get("sha256"), str)):
        return dict(previous)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def model_identity(name_or_dir: str) -> dict:
    """A local model folder by content (config + tokenizer hashes, weight sizes), a single weights file
    (e.g. ``.gguf``) by size and the hash of its header, a hub id or catalogue name by name."""
    path = Path(name_or_dir).expanduser()
    if path.is_file():
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(HEADER_BYTES)).hexdigest()
        return {"file_size": path.stat().st_size, "header_sha256": head}
    if not path.is_dir():
        return {"hub_id": str(name_or_dir)}
    ident: dict[str, Any] = {}
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            ident[name] = sha256_file(path / name)
    ident["weights"] = {f.name: f.stat().st_size for f in sorted(path.iterdir())
                        if f.is_file() and f.suffix in WEIGHT_SUFFIXES}
    return ident


def resolve_settings(settings: dict, stored: dict | None = None) -> dict:
    """``settings`` as plain JSON: each ``FileInput`` becomes its fingerprint (reusing ``stored``'s hash)."""
    stored = stored if isinstance(stored, dict) else {}
    out = {}
    for key, value in settings.items():
        if isinstance(value, FileInput):
            value = file_fingerprint(value.path, stored.get(key))
        out[key] = value
    return json.loads(json.dumps(out))  # tuples → lists, as they will be stored


def changed_keys(old: dict, new: dict) -> list[str]:
    """Keys whose recorded inputs differ (a file's mtime alone is no change: its hash decides)."""
    return sorted(k for k in set(old) | set(new) if _content(old.get(k)) != _content(new.get(k)))


def _content(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _content(v) for k, v in value.items() if k != "mtime_ns"}
    return value

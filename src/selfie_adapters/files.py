"""Files on disk: atomic writes, safetensors with metadata, weights-only torch files, JSON/JSONL, hub paths.

Every write in the package goes through ``atomic_path``: the data lands in a temp file beside the
target (``.NAME.<pid>.<n>.tmp``), is fsynced, then renamed over it, so a kill never leaves a
half-written file behind. The temp file of a killed writer is removed by the next write of the same
name (``remove_stale_temps``), and owners of a folder sweep it when they open and finish it.
The file gets the mode a plain ``open(path, "w")`` would give it (the umask's, or the replaced file's),
whatever mode the writer created the temp file with (safetensors and ``tempfile`` create theirs 0600).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import pickle
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SelfieError, first_line

if TYPE_CHECKING:
    import torch

HUB_PREFIX_PARTS = 3  # owner/repo/file.safetensors
CACHE_ENV = "SELFIE_CACHE"  # overrides the user cache folder (tests point it at a temp folder)
_tmp_ids = count()
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<n>\d+)\.tmp")


def user_cache_dir() -> Path:
    """This package's cache folder: ``$SELFIE_CACHE``, else ``$XDG_CACHE_HOME/selfie-adapters``, else
    ``~/.cache/selfie-adapters`` (dequantised GGUF models, topic indexes)."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache",
                                                     "selfie-adapters")
    return Path(root).expanduser()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit it is fsynced and renamed onto ``path``.

    >>> with atomic_path("out.bin") as tmp:
    ...     tmp.write_bytes(b"data")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, names={path.name})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_ids)}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: str | os.PathLike, *, names: set[str] | None = None,
                       owned: bool = False) -> list[Path]:
    """Delete temp files that ``atomic_path`` left in ``folder`` when its process was killed; return them.

    Only temps of ``names`` (all names when None) are touched, never this process's own. A temp is
    stale when its process is gone; ``owned=True`` (the caller holds the lock of everything written
    here, e.g. a ``.parts`` folder) treats every other process's temp as stale, pid reuse included.
    """
    folder, removed = Path(folder), []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        m = _TEMP_NAME.fullmatch(entry.name)
        if m is None or (names is not None and m["name"] not in names) or int(m["pid"]) == os.getpid():
            continue
        if (owned or not _alive(int(m["pid"]))) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def file_mode(path: str | os.PathLike) -> int:
    """The permission bits a plain write to ``path`` leaves: those of the file it replaces, else
    ``0o666`` less the process umask (``0o644`` under the usual umask 022)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (the format from the suffix, PNG without one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    return path


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN/inf become null); creates parent folders."""
    return write_text(path, json.dumps(_finite(obj), indent=indent, ensure_ascii=False) + "\n")


def _finite(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def open_text(path: Path):
    """A text handle on ``path``; ``.gz`` files are decompressed on the fly."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_jsonl(lines: Iterable[str], source: str, *, what: str = "rows",
               hint: str | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line; a bad line is one error naming source and line."""
    hint = hint or f"each line of the {what} file must be one JSON object"
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SelfieError(f"{source}:{n}: not valid JSON ({e.msg}); {hint}") from None
        if not isinstance(row, dict):
            raise SelfieError(f"{source}:{n}: expected a JSON object, got {type(row).__name__}; {hint}")
        yield n, row


def read_jsonl(path: str | os.PathLike, *, what: str = "rows") -> list[dict]:
    """Every JSON object of a JSONL file (``.gz`` too); a bad line is a one-line error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SelfieError(f"{what} file not found: {path}")
    with open_text(path) as f:
        return [row for _, row in iter_jsonl(f, str(path), what=what)]


def check_finite(t: torch.Tensor, what: str) -> None:
    """Refuse NaN/Inf in a float tensor, naming ``what`` and the count."""
    import torch

    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).sum().item()
        raise SelfieError(f"{what} contain {bad} NaN/Inf value(s); fix or drop them before use")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a safetensors file, with clear errors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (SafetensorError, OSError, ValueError) as e:
        raise SelfieError(f"{path.name} is not a readable safetensors file ({e})") from None
    return state, meta


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None, dtype: torch.dtype | str | None = "float32") -> Path:
    """Write contiguous CPU tensors (as ``dtype``, a torch dtype or its name; None keeps theirs) to a
    safetensors file atomically."""
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()} or None)
    return Path(path)


def save_file(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, imported on first use (the package starts without torch)."""
    from safetensors.torch import save_file as write

    write(tensors, filename, metadata=metadata)


def load_torch(path: Path):
    """A ``.pt`` file's contents with ``weights_only=True``: plain tensors and containers, never pickled code."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SelfieError(f"{path.name} holds objects that are not plain tensors/containers; refusing "
                          f"to unpickle it ({first_line(e)})") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise SelfieError(f"{path.name} is not a readable torch file ({first_line(e)})") from None


def resolve_file(source: str | os.PathLike) -> Path:
    """A local path as is; ``owner/repo/path/in/repo`` through the hub cache (offline mode honoured)."""
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            raise SelfieError(f"{source} is a folder; give the adapter file inside it")
        return path
    parts = str(source).split("/")
    looks_local = str(source).startswith((".", "/", "~")) or Path(parts[0]).exists()
    if len(parts) >= HUB_PREFIX_PARTS and not looks_local:
        from huggingface_hub import hf_hub_download
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            return Path(hf_hub_download(repo_id=repo, filename=filename))
        except Exception as e:  # network, offline cache miss, missing repo: one clear line
            raise SelfieError(f"could not fetch {filename!r} from hub repo {repo!r}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    raise SelfieError(f"file not found: {source}")

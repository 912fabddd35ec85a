"""A dequantised GGUF, kept: the first load of a ``.gguf`` model dequantises it (SmolLM2-135M: about
90 s on a small CPU) and keeps the result as a plain safetensors folder (weights, config, tokenizer) in
the user's cache; later loads read that folder in seconds, the same weights bit for bit.

The folder's name holds the GGUF file's fingerprint (size, mtime, sha256 of its first and last MiB)
and the transformers version (whose converter made the weights), so a changed file or converter is
dequantised again. It is written atomically: a ``.tmp-*`` folder beside it, every file fsynced, a
marker file last, then one rename; a killed writer leaves only a ``.tmp-*`` folder, which no load
trusts and the next writer removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SelfieError
from ..files import CACHE_ENV, user_cache_dir
from .catalogue import ModelSource

log = logging.getLogger(__name__)

ENDS_BYTES = 1 << 20  # hashed at each end of the file: constant cost (the whole 98 MB SmolLM2 file: ~1 s)
MARKER = "selfie-gguf.json"  # written last: a folder without it (or with another fingerprint) is not trusted
SUBDIR = "gguf"


def gguf_fingerprint(path: Path) -> dict:
    """What identifies a GGUF file's dequantised weights: size, mtime, sha256 of its ends, converter version."""
    import transformers

    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(ENDS_BYTES))
        if st.st_size > ENDS_BYTES:
            f.seek(max(ENDS_BYTES, st.st_size - ENDS_BYTES))
            digest.update(f.read())
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256_ends": digest.hexdigest(), "transformers": transformers.__version__}


def cache_folder(source: ModelSource, fingerprint: dict) -> Path:
    """Where ``source``'s dequantised weights are kept: ``<cache>/gguf/<file stem>-<fingerprint hash>``."""
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    return user_cache_dir() / SUBDIR / f"{Path(source.gguf_file).stem}-{key}"


def is_complete(folder: Path, fingerprint: dict) -> bool:
    """True when ``folder`` was fully written for this fingerprint (its marker says so)."""
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8")) == fingerprint
    except (OSError, ValueError):
        return False


def cached_gguf(source: ModelSource) -> Path | None:
    """The folder with ``source``'s dequantised weights, dequantising and keeping them on the first load;
    None when the cache folder cannot be written (the caller then loads the GGUF file itself)."""
    gguf = Path(source.path) / source.gguf_file
    fingerprint = gguf_fingerprint(gguf)
    folder = cache_folder(source, fingerprint)
    if is_complete(folder, fingerprint):
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(folder.parent, os.W_OK):
            raise PermissionError(f"{folder.parent} is not writable")
    except OSError as e:
        log.warning("cannot keep the dequantised %s (%s); every load dequantises it again (set %s to a "
                    "writable folder)", source.name, e, CACHE_ENV)
        return None
    started = time.perf_counter()
    log.info("dequantising %s: first load of this GGUF file, kept in %s for the next loads", source.name,
             folder, extra={"load_stage": "note", "model": source.name})
    model, tok = dequantise(source)
    try:
        write_folder(folder, model, tok, fingerprint)
    except OSError as e:
        log.warning("could not keep the dequantised %s in %s (%s)", source.name, folder, e)
        return None
    log.info("dequantised and kept %s in %.1f s", source.name, time.perf_counter() - started)
    return folder


def dequantise(source: ModelSource):
    """(plain fp32 model, tokenizer) from ``source``'s GGUF file (transformers' converter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_gguf():
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    return plain_copy(model), tok


def write_folder(folder: Path, model, tok, fingerprint: dict) -> None:
    """``model`` and ``tok`` as a HF folder at ``folder``, atomically (temp folder, fsync, marker, rename)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder.parent)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(fingerprint, indent=2), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first (or an untrusted folder is in the way)
            if not is_complete(folder, fingerprint):
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
        _fsync(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(root: Path) -> None:
    """Remove ``.tmp-*`` folders whose writer (by pid, on this machine) is no longer running."""
    for tmp in root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def plain_copy(model):
    """The same weights in a model without ``quantization_config``: transformers refuses to save a
    GGUF-loaded model ("quantized with gguf and is not serializable"), so the weights move to a plain one."""
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    plain = type(model)(config).to(dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    if unexpected or set(missing) - tied:
        raise SelfieError(f"exporting {config._name_or_path}: the GGUF weights do not fill the model "
                          f"(missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})")
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval().requires_grad_(False)


@contextmanager
def quiet_gguf() -> Iterator[None]:
    """Silence the GGUF converter's own tqdm bar (it ignores transformers' progress-bar switch)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = original

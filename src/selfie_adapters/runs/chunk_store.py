"""Long tensor jobs in numbered chunk files, so a killed run resumes where it stopped.

Chunk k of a job lives in ``OUT.parts/k.safetensors`` (written atomically) beside a record of the
inputs (``OUT.parts/settings.json``); a rerun with the same inputs skips the chunks already there,
one with other inputs is refused. The finished OUT carries the same record in its metadata, so a
rerun on a finished OUT does nothing, and a file at OUT that is not ours is never replaced
without ``overwrite``. The job holds ``OUT.lock`` from start to end. Whatever a killed run left
(temp files, chunks of a finished OUT) is removed by the next run, so a finished job leaves only OUT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import SelfieError
from ..files import read_safetensors, remove_stale_temps, save_tensors
from .fingerprint import resolve_settings
from .outputs import OutputLock, Record, check_output_path, check_same_inputs, refuse_foreign

_CHUNK_FILE = re.compile(r"\d{6}\.safetensors")


class ChunkStore:
    """Resumable chunked computation of one output file (see module docstring).

    >>> with ChunkStore("vecs.safetensors", {"model": "m"}, command="extract") as store:
    ...     if not store.complete:
    ...         parts = store.run(len(texts), 1024, compute)
    ...         save_tensors(merge(parts), "vecs.safetensors", store.metadata()); store.finish()
    """

    def __init__(self, out: str | Path, settings: dict, *, command: str = "extract", overwrite: bool = False) -> None:
        self.out, self.command = check_output_path(out), command
        self.dir = self.out.with_name(self.out.name + ".parts")
        self.complete = False
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(self.out).acquire()
        try:
            self._open(settings, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, settings: dict, overwrite: bool) -> None:
        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):
            raise SelfieError(f"{self.dir} (where unfinished chunks go) is not a folder; move it away")
        record = Record(self.dir, self.command, self.dir / "settings.json")
        remove_stale_temps(self.out.parent, names={self.out.name}, owned=True)  # we hold OUT.lock
        remove_stale_temps(self.dir, owned=True)
        finished = self._finished_inputs()
        stored = finished if isinstance(finished, dict) else record.read() if self.dir.is_dir() else None
        self.inputs = resolve_settings(settings, stored)
        if finished is not None and not overwrite:
            if finished == "foreign":
                raise refuse_foreign(self.out, self.command, "exists and is not an output of ours")
            check_same_inputs(self.out, finished, self.inputs)
            self.complete = True  # same inputs, already written: nothing to do but drop what a run killed
            self._clear()         # between writing OUT and finish() left of its chunks
            return
        chunks = self._chunk_files()
        if chunks and not overwrite:
            old = record.read()
            if old is None:
                raise refuse_foreign(self.dir, self.command, "holds chunks without a settings record of ours")
            check_same_inputs(self.out, old, self.inputs)
        elif overwrite:
            self._clear()
        self.dir.mkdir(exist_ok=True)
        record.write(self.inputs)

    def _finished_inputs(self) -> dict | str | None:
        """The inputs recorded in a finished OUT; "foreign" when OUT holds something else; None if absent."""
        if not self.out.exists() or self.out.stat().st_size == 0:
            return None
        try:
            with safe_open(str(self.out), framework="pt") as f:
                meta = f.metadata() or {}
            inputs = json.loads(meta["selfie_inputs"]) if meta.get("selfie") == self.command else None
        except (SafetensorError, OSError, KeyError, ValueError):
            inputs = None
        return inputs if isinstance(inputs, dict) else "foreign"

    def _chunk_files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if _CHUNK_FILE.fullmatch(p.name))

    def metadata(self) -> dict[str, str]:
        """What the finished OUT records about itself (merge into its safetensors metadata)."""
        return {"selfie": self.command, "selfie_inputs": json.dumps(self.inputs)}

    def run(self, total: int, chunk: int, compute: Callable[[int, int], dict[str, torch.Tensor]],
            progress: Callable[[int], None] | None = None) -> list[dict[str, torch.Tensor]]:
        """``compute(start, stop)`` for every chunk not yet on disk; all chunks' tensors in order."""
        results = []
        for k, start in enumerate(range(0, total, chunk)):
            stop = min(start + chunk, total)
            path = self.dir / f"{k:06d}.safetensors"
            if path.exists():
                results.append(read_safetensors(path)[0])
            else:
                results.append(compute(start, stop))
                save_tensors(results[-1], path, dtype=None)
            if progress is not None:
                progress(stop - start)
        return results

    def _clear(self) -> None:
        """Remove our chunk files, record and temp files (nothing else), then the folder if that left it empty."""
        for p in self._chunk_files():
            p.unlink()
        (self.dir / "settings.json").unlink(missing_ok=True)
        remove_stale_temps(self.dir, owned=True)
        if self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()

    def finish(self) -> None:
        """OUT is written: drop the chunks."""
        self._clear()

    def close(self) -> None:
        """Release OUT; a run that stopped before its first chunk leaves no folder behind."""
        try:
            if not self._chunk_files():
                self._clear()
        finally:
            self.lock.release()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Long tensor jobs in numbered chunk files, so a killed run resumes where it stopped."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from .files import read_safetensors, save_tensors
from .jsonl import check_settings


class ChunkStore:
    """Chunk k of a job lives in ``OUT.parts/k.safetensors`` (written atomically); a rerun with the
    same settings skips the chunks already there. ``finish`` removes the folder once OUT is written.
    """

    def __init__(self, out: str | Path, settings: dict) -> None:
        self.out = Path(out)
        self.dir = self.out.with_name(self.out.name + ".parts")
        self.dir.mkdir(parents=True, exist_ok=True)
        check_settings(self.dir / "settings.json", settings, any(self.dir.glob("*.safetensors")), self.out)

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

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

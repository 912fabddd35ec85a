"""Which rows are worth describing: the one place zero rows are dropped, for every vector source, and the
record of what was dropped (``OUT.skipped.json`` beside a describe output)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import SelfieError
from ..files import write_json


def drop_zero_rows(vectors: torch.Tensor, indices: Sequence[int], what: str = "vector"
                   ) -> tuple[torch.Tensor, list[int]]:
    """Rows with a zero norm say nothing about the model: skip them with a warning; none left is an error."""
    alive = vectors.abs().amax(dim=-1) > 0 if vectors.numel() else torch.zeros(len(vectors), dtype=torch.bool)
    dead = [i for i, a in zip(indices, alive.tolist()) if not a]
    if dead:
        more = f" and {len(dead) - 10} more" if len(dead) > 10 else ""
        warnings.warn(f"skipping {len(dead)} zero {what}(s) (nothing to describe): {dead[:10]}{more}", stacklevel=2)
    kept = [i for i, a in zip(indices, alive.tolist()) if a]
    if not kept:
        raise SelfieError(f"no {what}s left to describe: all {len(dead)} are zero")
    return vectors[alive], kept


def skipped_path(out: str | os.PathLike) -> Path:
    """Where the rows a describe run skipped are listed: ``OUT.skipped.json`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".skipped.json")


def write_skipped(out: str | os.PathLike, indices: Sequence[int], kept: Sequence[int], what: str = "vector"
                  ) -> Path | None:
    """List the ``indices`` not in ``kept`` in ``OUT.skipped.json`` (``{"what", "count", "indices"}``); with
    none skipped, a stale list from an earlier run is removed. Returns the file, or None."""
    path = skipped_path(out)
    alive = set(kept)
    skipped = [i for i in indices if i not in alive]
    if not skipped:
        path.unlink(missing_ok=True)
        return None
    return write_json(path, {"what": what, "count": len(skipped), "indices": skipped}, indent=None)


def skipped_note(out: str | os.PathLike) -> str | None:
    """One line naming how many rows ``OUT`` skipped and where they are listed; None if none were."""
    path = skipped_path(out)
    if not path.is_file():
        return None
    info = json.loads(path.read_text(encoding="utf-8"))
    return f"skipped {info['count']} zero {info['what']}(s): listed in {path}"

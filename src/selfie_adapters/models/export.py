"""Write any loadable model (catalogue name, GGUF, hub id, folder) as a plain HF safetensors folder.

Needed by ``--engine vllm``: vLLM's CPU backend does not load GGUF. transformers refuses
``save_pretrained`` on a GGUF-loaded model ("quantized with gguf and is not serializable"), so the
dequantised weights are moved into a plain model built from the same config (without the
``quantization_config``) and that one is saved.

>>> export_model("smollm2-135m-instruct", "exported/smollm2-135m")   # then --model exported/smollm2-135m
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SelfieError
from .gguf_cache import plain_copy
from .loading import load_model


def export_model(name: str, out: str | os.PathLike, *, dtype: str = "auto", overwrite: bool = False) -> Path:
    """``name`` as ``out/{config.json, model.safetensors, generation_config.json, tokenizer files}``
    (GGUF weights dequantised: fp32 under ``dtype="auto"``); returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SelfieError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    model, tok = load_model(name, dtype=dtype)
    if hasattr(model.config, "quantization_config"):  # a GGUF loaded as such (its cache unwritable)
        model = plain_copy(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out

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
from .catalogue import resolve_model
from .loading import load_model


def export_model(name: str, out: str | os.PathLike, *, dtype: str = "auto", overwrite: bool = False) -> Path:
    """``name`` as ``out/{config.json, model.safetensors, generation_config.json, tokenizer files}``
    (GGUF weights dequantised: fp32 under ``dtype="auto"``); returns ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SelfieError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    model, tok = load_model(name, dtype=dtype)
    if resolve_model(name).is_gguf:
        model = _plain_copy(model)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _plain_copy(model):
    """The same weights in a model without ``quantization_config`` (so transformers will save it)."""
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

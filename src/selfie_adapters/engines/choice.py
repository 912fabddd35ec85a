"""Which engine generates the descriptions (``DescribeRun.engine``, ``--engine``) and what each refuses.

Light on purpose (no model, no vLLM import): the checks run before anything loads.
"""

from __future__ import annotations

import importlib.util

from ..errors import SelfieError
from ..models.catalogue import CATALOGUE

ENGINES = ("hf", "vllm")  # hf: transformers + this package's generate; vllm: engines.vllm
VLLM_INSTALL = "pip install 'selfie-adapters[vllm]' in a venv of its own (make setup-vllm)"


class EngineMemoryError(SelfieError):
    """An engine could not reserve the GPU memory it needs: another process holds it (often a killed
    worker's engine still exiting). One line for the CLI; a Ray shard retries it on a fresh worker."""


def check_engine(engine: str, model: str, *, inject_layer: int | None = None, relevancy: bool = False) -> None:
    """Refuse what ``engine`` cannot do, before any model loads (one line each, with the fix)."""
    if engine not in ENGINES:
        raise SelfieError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "hf":
        return
    if inject_layer is not None:
        raise SelfieError("--inject-layer is not supported with --engine vllm (vLLM takes input embeddings only); "
                          "use --engine hf")
    if relevancy:
        raise SelfieError("--relevancy is not supported with --engine vllm (no teacher-forced pass with prompt "
                          "embeddings); use --engine hf")
    entry = CATALOGUE.get(str(model).lower())
    if str(model).lower().endswith(".gguf") or (entry is not None and entry.gguf_file is not None):
        raise SelfieError(f"--engine vllm cannot load the GGUF model {model!r}; write it as a safetensors folder "
                          f"first: selfie models export {model} --out DIR, then --model DIR")
    if importlib.util.find_spec("vllm") is None:
        raise SelfieError(f"--engine vllm needs vLLM, which is not installed: {VLLM_INSTALL}")

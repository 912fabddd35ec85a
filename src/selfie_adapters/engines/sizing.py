"""How many rows one forward (HF) or one vLLM engine should hold, and how much GPU memory vLLM may take.

Pure arithmetic on byte counts, so every rule is unit-tested on CPU; the only device calls are
:func:`free_device_bytes` (``torch.cuda.mem_get_info``) and :func:`model_dtype_bytes`.

* HF engine: each row holds a KV cache of ``kv_bytes_per_token(config) × (prompt + new tokens)``
  (twice: the static-cache path keeps a smaller cache per batch bucket beside the largest, see
  ``interpret/static_decode.py``), plus its logits and the prefill's activations. The batch is what
  fits in ``free × (1 − reserve)``, rounded down to a power of two (the decode buckets), capped at
  ``MAX_HF_BATCH`` (past ~1k rows an 8B decode step is compute-bound: more rows add no labels/s).
* vLLM: ``gpu_memory_utilization`` is a fraction of the *whole* device that vLLM checks is free at
  start; the default is what is free now minus a margin, so a GPU shared with anything else still starts.
  Rows per ``LLM.generate`` (= ``max_num_seqs``): what the KV cache left after the weights holds, at most
  ``MAX_VLLM_SEQS``.
"""

from __future__ import annotations

import torch

GIB = 1 << 30
CPU_BATCH = 32  # the HF engine's batch on CPU (today's default: CPU decode is compute-bound already)
CPU_VLLM_SEQS = 256  # rows per LLM.generate on vLLM's CPU backend (its KV space is 1 GiB unless set)
MAX_HF_BATCH = 1024
MAX_VLLM_SEQS = 1024  # vLLM's own default for offline use on a large GPU
VLLM_MARGIN_BYTES = GIB  # left free beside vLLM: CUDA context of other processes, fragmentation


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of K and V one token adds to the cache across all blocks (8B bf16: 2·32·8·128·2 = 131072)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * dtype_bytes


def hf_row_bytes(config, tokens_per_row: int, dtype_bytes: int, cache_copies: int = 2) -> int:
    """Device bytes one row of the HF engine needs: its KV caches, its fp32 + model-dtype logits
    and the prefill's widest activation (the MLP's, three of them live at once)."""
    kv = kv_bytes_per_token(config, dtype_bytes) * tokens_per_row * cache_copies
    logits = config.vocab_size * (4 + 4 + dtype_bytes)  # model-dtype logits, their fp32 copy, the exp temp
    width = max(config.hidden_size, getattr(config, "intermediate_size", 0) or 0)
    activations = 3 * tokens_per_row * width * dtype_bytes
    return kv + logits + activations


def power_of_two_floor(n: int) -> int:
    """The largest power of two <= n (n >= 1)."""
    return 1 << (max(1, int(n)).bit_length() - 1)


def auto_batch_size(free_bytes: int, row_bytes: int, *, reserve: float = 0.1, max_batch: int = MAX_HF_BATCH) -> int:
    """Rows that fit in ``free_bytes × (1 − reserve)`` at ``row_bytes`` each: a power of two in [1, max_batch].

    >>> auto_batch_size(100 * GIB, 18 * 2**20)   # an H200 after the 8B weights, 18 MiB a row
    1024
    >>> auto_batch_size(2 * GIB, 18 * 2**20)
    64
    """
    fits = int(free_bytes * (1 - reserve)) // max(row_bytes, 1)
    return power_of_two_floor(min(max(fits, 1), max_batch))


def free_device_bytes(device: torch.device | str) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device now, or None for any other device."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(device)


def hf_batch_size(model, tokens_per_row: int) -> int:
    """The HF engine's batch for ``model`` where it sits: ``CPU_BATCH`` off CUDA, else from free memory."""
    from ..models.tree import model_device

    mem = free_device_bytes(model_device(model))
    if mem is None:
        return CPU_BATCH
    dtype_bytes = next(model.parameters()).element_size()
    return auto_batch_size(mem[0], hf_row_bytes(model.config, tokens_per_row, dtype_bytes))


def vllm_memory_utilization(free_bytes: int, total_bytes: int, margin: int = VLLM_MARGIN_BYTES) -> float:
    """vLLM's ``gpu_memory_utilization``: the free fraction of the device minus ``margin`` (vLLM refuses to
    start when ``utilization × total`` exceeds what is free).

    >>> round(vllm_memory_utilization(143 * GIB, 143 * GIB), 4)
    0.993
    >>> round(vllm_memory_utilization(60 * GIB, 143 * GIB), 4)   # 80 GiB held by another process
    0.4126
    """
    if free_bytes - margin <= 0:
        raise ValueError(f"only {free_bytes / GIB:.1f} GiB of {total_bytes / GIB:.1f} GiB is free on the GPU")
    return round((free_bytes - margin) / total_bytes, 4)


def vllm_max_num_seqs(kv_bytes: int, kv_bytes_per_row: int, cap: int = MAX_VLLM_SEQS) -> int:
    """Rows vLLM can hold at once: its KV cache over one row's (context) KV bytes, at most ``cap``, a power
    of two (so shards of several engines line up).

    >>> vllm_max_num_seqs(100 * GIB, 131072 * 256)   # 8B bf16, 256-token context
    1024
    >>> vllm_max_num_seqs(4 * GIB, 131072 * 256)
    128
    """
    return power_of_two_floor(min(max(kv_bytes // max(kv_bytes_per_row, 1), 1), cap))


def model_dtype_bytes(dtype: str, config) -> int:
    """Bytes per element of the weights for ``dtype`` ("auto": the config's dtype, else 2)."""
    if dtype != "auto":
        return getattr(torch, dtype).itemsize
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = getattr(torch, declared, None)
    return declared.itemsize if isinstance(declared, torch.dtype) else 2


def weight_bytes(config, dtype_bytes: int) -> int:
    """Approximate bytes of a decoder-only checkpoint's weights from its config (embeddings, blocks, head)."""
    d, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    mlp = getattr(config, "intermediate_size", 4 * d)
    per_block = d * head_dim * (2 * heads + 2 * kv) + 3 * d * mlp + 2 * d
    tied = getattr(config, "tie_word_embeddings", False)
    return (layers * per_block + config.vocab_size * d * (1 if tied else 2) + d) * dtype_bytes

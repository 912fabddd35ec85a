"""The arithmetic that sizes the GPU path: HF batch from free memory, vLLM's memory fraction and rows per call,
bf16 by default on a GPU (pure functions: no GPU needed)."""

import pytest
import torch
from transformers import LlamaConfig

from selfie_adapters.engines import sizing
from selfie_adapters.models.loading import auto_dtype
from selfie_adapters.testing import LLAMA31_8B

GIB, MIB = sizing.GIB, 1 << 20


@pytest.fixture(scope="module")
def config_8b():
    return LlamaConfig(**LLAMA31_8B)


def test_kv_and_row_bytes_of_the_8b(config_8b):
    assert sizing.kv_bytes_per_token(config_8b, 2) == 2 * 32 * 8 * 128 * 2 == 131072
    row = sizing.hf_row_bytes(config_8b, 56, 2)  # 26 prompt + 30 new tokens
    kv = 131072 * 56 * 2
    assert row == kv + 128256 * 10 + 3 * 56 * 14336 * 2
    assert 17 * MIB < row < 20 * MIB
    assert sizing.weight_bytes(config_8b, 2) == pytest.approx(8_030_261_248 * 2, rel=1e-4)


@pytest.mark.parametrize(("free", "row", "want"), [
    (100 * GIB, 18 * MIB, 1024),  # an H200 after the weights: capped
    (2 * GIB, 18 * MIB, 64),  # 2 GiB × 0.9 / 18 MiB = 102 → 64
    (10 * MIB, 18 * MIB, 1),  # nothing fits: still one row
    (int(1.1 * 300 * MIB / 0.9), MIB, 256),  # 330 rows fit → the power of two below
])
def test_auto_batch_size(free, row, want):
    assert sizing.auto_batch_size(free, row) == want


def test_auto_batch_size_respects_reserve_and_cap():
    assert sizing.auto_batch_size(100 * MIB, MIB, reserve=0.0) == 64
    assert sizing.auto_batch_size(100 * GIB, MIB, max_batch=100) == 64


def test_hf_batch_size_is_32_on_cpu(tiny_model):
    assert sizing.hf_batch_size(tiny_model, 56) == sizing.CPU_BATCH


def test_hf_batch_size_from_free_gpu_memory(tiny_model, monkeypatch):
    monkeypatch.setattr(sizing, "free_device_bytes", lambda device: (64 * MIB, 80 * GIB))
    row = sizing.hf_row_bytes(tiny_model.config, 56, 4)
    assert sizing.hf_batch_size(tiny_model, 56) == sizing.auto_batch_size(64 * MIB, row)


def test_vllm_memory_utilization():
    assert sizing.vllm_memory_utilization(143 * GIB, 143 * GIB) == round(142 / 143, 4)
    assert sizing.vllm_memory_utilization(60 * GIB, 143 * GIB) == round(59 / 143, 4)
    with pytest.raises(ValueError, match="0.5 GiB of 143.0 GiB is free"):
        sizing.vllm_memory_utilization(GIB // 2, 143 * GIB)


def test_vllm_max_num_seqs():
    assert sizing.vllm_max_num_seqs(100 * GIB, 131072 * 158) == 1024
    assert sizing.vllm_max_num_seqs(GIB, 131072 * 158) == 32  # 51 rows fit
    assert sizing.vllm_max_num_seqs(0, 131072 * 158) == 1


def test_bf16_by_default_on_a_gpu():
    assert auto_dtype("cuda", False, "float32") == "bfloat16"
    assert auto_dtype("cuda:1", False, "bfloat16") == "bfloat16"
    assert auto_dtype("cuda", False, "float16") == "float16"
    assert auto_dtype("cuda", True, None) == "bfloat16"  # dequantised GGUF on a GPU
    assert auto_dtype("cpu", False, "float32") == "auto" and auto_dtype(None, False, None) == "auto"
    assert auto_dtype(None, True, None) == "float32"
    assert sizing.model_dtype_bytes("auto", LlamaConfig(dtype=torch.float32)) == 4
    assert sizing.model_dtype_bytes("bfloat16", LlamaConfig()) == 2


def test_interpreter_batches_by_free_memory_when_no_batch_size(tiny_model, tokenizer, monkeypatch):
    from selfie_adapters import Interpreter

    vectors = torch.randn(40, 64)
    seen = []
    interp = Interpreter(tiny_model, tokenizer)
    interp.describe(vectors, scales=[1.0], max_new_tokens=1, progress=seen.append)
    assert seen == [32, 8]  # CPU: 32 rows
    row = sizing.hf_row_bytes(tiny_model.config, len(interp.prompt_ids) + 1, 4)
    monkeypatch.setattr(sizing, "free_device_bytes", lambda device: (int(16 * row / 0.9) + 1, 80 * GIB))
    seen.clear()
    interp.describe(vectors, scales=[1.0], max_new_tokens=1, progress=seen.append)
    assert seen == [16, 16, 8]  # what 16 rows of free memory hold

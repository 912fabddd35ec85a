"""benchmarks/bench_label_sae.py runs end to end (toy model, a few vectors), and the random Llama-3.1-8B
builder has the 8B's exact shape (built on the meta device: no memory)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from selfie_adapters.testing import LLAMA31_8B, make_llama31_8b_random


def test_random_llama31_8b_has_the_8b_shape():
    model = make_llama31_8b_random(device="meta")
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248
    assert next(model.parameters()).dtype == torch.bfloat16
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.intermediate_size) == (
        4096, 32, 8, 14336)
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["rope_theta"] == 500000.0
    assert LLAMA31_8B["vocab_size"] == 128256


@pytest.mark.slow
def test_bench_label_sae_runs_on_the_toy_model(capsys):
    path = Path(__file__).parents[1] / "benchmarks" / "bench_label_sae.py"
    spec = importlib.util.spec_from_file_location("bench_label_sae", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--model", "toy", "--vectors", "3", "--max-new-tokens", "4", "--threads", "1",
                "--engine", "loop", "--engine", "batched", "--engine", "hf"])
    out = capsys.readouterr().out
    for engine in ("loop", "batched", "hf"):
        assert f"toy    {engine}" in out
    assert "0/3" in out  # greedy labels agree with ours

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


def load_bench():
    path = Path(__file__).parents[1] / "benchmarks" / "bench_label_sae.py"
    spec = importlib.util.spec_from_file_location("bench_label_sae", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_bench_label_sae_runs_on_the_toy_model(capsys):
    load_bench().main(["--model", "toy", "--vectors", "3", "--max-new-tokens", "4", "--threads", "1",
                       "--engine", "loop", "--engine", "batched", "--engine", "hf"])
    out = capsys.readouterr().out
    for engine in ("loop", "batched", "hf"):
        assert f"toy    {engine}" in out
    assert "0/3" in out  # greedy labels agree with ours


def test_engines_and_baseline_subset(capsys):
    """--engines picks engines; --baseline-vectors runs the slow baselines on a prefix (compared on the overlap)."""
    load_bench().main(["--model", "toy", "--vectors", "6", "--baseline-vectors", "2", "--max-new-tokens", "3",
                       "--threads", "1", "--engines", "batched,hf-dynamic,hf-static"])
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith("toy ") and len(line.split()) == 8}
    assert set(rows) == {"batched", "hf-dynamic", "hf-static"}
    assert rows["batched"][2] == "2" and rows["hf-static"][2] == "6"
    assert rows["batched"][7] == "0/2" and rows["hf-dynamic"][7] == "0/6"  # compared with hf-static's labels
    assert rows["hf-static"][5].endswith("x") and rows["hf-dynamic"][6] == "1.00x"


def test_vllm_that_fails_to_start_is_skipped_after_the_hf_model_is_freed(monkeypatch, capsys, tmp_path):
    import sys
    import weakref

    from selfie_adapters.engines import vllm as engine
    from selfie_adapters.testing import FakeLLM, fake_vllm_module, save_tiny_llama

    FakeLLM.reset()
    FakeLLM.fail_starts = [ValueError("Free memory on device (1.0/139.8 GiB) on startup is less than desired GPU "
                                      "memory utilization (0.9, 125.8 GiB).")]
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    monkeypatch.setattr(engine, "_LLMS", {})
    folder = save_tiny_llama(tmp_path / "tiny", layers=1)
    load_bench().main(["--model", str(folder), "--vectors", "2", "--max-new-tokens", "2", "--threads", "1",
                       "--engines", "hf,vllm"])
    out = capsys.readouterr().out
    assert "vllm skipped: EngineMemoryError: vLLM could not reserve GPU memory" in out  # the warm-up is inside the try
    assert " hf " in out  # the other rows are kept
    FakeLLM.reset()
    bench = load_bench()
    models, alive = [], []
    real_load = bench.load

    def load(*args):
        model, tok = real_load(*args)
        models.append(weakref.ref(model))
        return model, tok

    class Recording(FakeLLM):
        def __init__(self, **kwargs):
            alive.append([ref() is not None for ref in models])
            super().__init__(**kwargs)

    monkeypatch.setattr(bench, "load", load)
    monkeypatch.setattr(sys.modules["vllm"], "LLM", Recording)
    bench.main(["--model", str(folder), "--vectors", "3", "--max-new-tokens", "2", "--threads", "1",
                "--engines", "hf,hf-static,vllm", "--max-num-seqs", "2"])
    out = capsys.readouterr().out
    assert "with 2 rows per call" in out and FakeLLM.started[0]["max_num_seqs"] == 2
    assert alive == [[False]]  # the HF model was freed before vLLM started
    FakeLLM.reset()

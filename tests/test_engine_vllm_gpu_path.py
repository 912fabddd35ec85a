"""The GPU path of `--engine vllm` and `--ray`, checked without vLLM or a GPU: a fake ``vllm.LLM`` records the
keywords it is started with and the prompts of each call; CUDA memory queries are monkeypatched.

One test per defect of issue 24 (the numbers are the issue's)."""

import sys
import weakref

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters.engines import ray_shards, sizing
from selfie_adapters.engines import vllm as engine
from selfie_adapters.engines.choice import EngineMemoryError
from selfie_adapters.errors import SelfieError
from selfie_adapters.interpret.resumable import DescribeRun
from selfie_adapters.testing import LLAMA31_8B, FakeLLM, fake_vllm_module, save_tiny_llama
from selfie_adapters.vectors.source import VectorSource

GIB = sizing.GIB
MEMORY_MESSAGE = ("Free memory on device (20.1/139.8 GiB) on startup is less than desired GPU memory utilization "
                  "(0.9, 125.8 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.")


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.reset()
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module())
    monkeypatch.setattr(engine, "_LLMS", {})
    yield FakeLLM
    FakeLLM.reset()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("vllm-fake") / "tiny", layers=2)


def on_a_gpu(monkeypatch, free: int, total: int = 143 * GIB) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, total))


# 2: gpu_memory_utilization is what is free, minus a margin (vLLM's 0.9 fails beside anything else)
def test_gpu_memory_utilization_defaults_to_the_free_fraction(monkeypatch):
    on_a_gpu(monkeypatch, free=60 * GIB)
    kwargs = engine.llm_kwargs("m", dtype="bfloat16", max_model_len=256, max_num_seqs=1024)
    assert kwargs["gpu_memory_utilization"] == round(59 / 143, 4)
    assert kwargs["enforce_eager"] is False  # CUDA graphs on a GPU
    given = engine.llm_kwargs("m", dtype="bfloat16", max_model_len=256, max_num_seqs=8, gpu_memory_utilization=0.3)
    assert given["gpu_memory_utilization"] == 0.3
    cpu = engine.llm_kwargs("m", dtype="float32", max_model_len=256, max_num_seqs=8, cuda=False)
    assert "gpu_memory_utilization" not in cpu and cpu["enforce_eager"] is True


# 3 + 4: rows per call = max_num_seqs (sized to the device), prefix caching off
def test_rows_per_call_are_the_engines_max_num_seqs_and_prefix_caching_is_off(fake_vllm, model_dir):
    vectors = torch.randn(600, 64)
    eng = engine.VllmEngine(str(model_dir))
    rows = eng.describe(vectors, scales=[1.0], max_new_tokens=4, batch_size=32)  # batch_size is the HF engine's
    assert len(rows) == 600 and all(r.closed and r.label == "" for r in rows)
    assert [len(c) for c in fake_vllm.calls] == [256, 256, 88]  # CPU default: 256 rows per LLM.generate
    (kwargs,) = fake_vllm.started
    assert kwargs["enable_prefix_caching"] is False and kwargs["max_num_seqs"] == 256
    assert kwargs["enable_prompt_embeds"] is True

    FakeLLM.reset()
    engine.VllmEngine(str(model_dir), max_num_seqs=300).describe(vectors, scales=[1.0], max_new_tokens=4)
    assert [len(c) for c in fake_vllm.calls] == [300, 300]
    assert fake_vllm.started[0]["max_num_seqs"] == 300


def test_rows_per_call_are_sized_to_the_gpu(monkeypatch):
    from transformers import LlamaConfig

    config = LlamaConfig(**LLAMA31_8B)
    on_a_gpu(monkeypatch, free=139 * GIB)  # an empty H200
    assert engine.default_max_num_seqs(config, "bfloat16", 30) == 1024
    on_a_gpu(monkeypatch, free=24 * GIB)  # 16 GB of weights leave ~6 GiB of KV cache: 2.1 MiB... per 158 tokens
    small = engine.default_max_num_seqs(config, "bfloat16", 30)
    assert 64 <= small < 1024 and small & (small - 1) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.default_max_num_seqs(config, "bfloat16", 30) == sizing.CPU_VLLM_SEQS


# 9: one batched copy to the CPU, not one clone per row
def test_prompts_are_one_batched_copy(fake_vllm, model_dir):
    eng = engine.VllmEngine(str(model_dir))
    soft = torch.randn(5, 64)
    prompts = eng.prompts(soft)
    storages = {p["prompt_embeds"].untyped_storage().data_ptr() for p in prompts}
    assert len(storages) == 1  # views of one (B, T, d) tensor
    table = engine.input_embedding_table(str(model_dir))
    for b, p in enumerate(prompts):  # what the per-row clone built
        want = table[eng.prompt_ids].clone()
        want[eng.sites] = soft[b].to(want.dtype)
        torch.testing.assert_close(p["prompt_embeds"], want, rtol=0, atol=0)


# 7: vLLM's memory check fails (a killed actor's engine still holds the GPU): a retryable error, not a fatal one
def test_a_memory_error_at_start_is_an_engine_memory_error(fake_vllm, model_dir):
    fake_vllm.fail_starts = [ValueError(MEMORY_MESSAGE)]
    eng = engine.VllmEngine(str(model_dir))
    with pytest.raises(EngineMemoryError, match="could not reserve GPU memory.*--gpu-memory-utilization"):
        eng.describe(torch.randn(2, 64), scales=[1.0], max_new_tokens=4)
    assert len(eng.describe(torch.randn(2, 64), scales=[1.0], max_new_tokens=4)) == 2  # the next start works
    fake_vllm.fail_starts = [ValueError("some other bad argument")]
    engine._LLMS.clear()
    with pytest.raises(ValueError, match="other bad argument"):
        eng.describe(torch.randn(2, 64), scales=[1.0], max_new_tokens=4)


def test_a_shard_whose_engine_lacked_memory_is_retried_not_fatal():
    from ray.exceptions import RayTaskError

    def stream(cause):
        def gen():
            raise RayTaskError("describe", "traceback", cause)
            yield

        return gen()

    assert ray_shards._take(stream(EngineMemoryError("vLLM could not reserve GPU memory")), None, None,
                            None) == "EngineMemoryError"
    with pytest.raises(SelfieError, match="bad input"):  # our own errors stay fatal
        ray_shards._take(stream(SelfieError("bad input")), None, None, None)


# 5: one GPU per vLLM actor whatever --device says; no CUDA check on the head node
@pytest.mark.parametrize(("engine_name", "device", "gpus", "want"), [
    ("vllm", None, 8, {"num_gpus": 1}), ("vllm", "cpu", 8, {"num_gpus": 1}), ("vllm", None, 0, {"num_cpus": 1}),
    ("hf", "cuda", 0, {"num_gpus": 1}), ("hf", "cpu", 8, {"num_cpus": 1}), ("hf", None, 4, {"num_gpus": 1}),
    ("hf", None, 0, {"num_cpus": 1})])
def test_worker_options(engine_name, device, gpus, want):
    run = DescribeRun(model="m", engine=engine_name, device=device)
    assert ray_shards.default_worker_options(run, {"CPU": 32, "GPU": gpus}) == want


def test_ray_describe_does_not_need_cuda_on_the_head(monkeypatch, tmp_path, capsys):
    from selfie_adapters.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    seen = {}

    def fake_sharded(run, out, **kwargs):
        seen["run"] = run
        out.write_text("")
        return out

    monkeypatch.setattr(ray_shards, "describe_sharded", fake_sharded)
    vecs = tmp_path / "v.safetensors"
    save_file({"v": torch.randn(2, 64)}, str(vecs))
    args = ["describe", "--model", "toy", "--vectors", str(vecs), "--out", str(tmp_path / "o.jsonl")]
    assert main([*args, "--device", "cuda", "--ray", "auto", "--engine", "vllm", "--max-num-seqs", "512",
                 "--gpu-memory-utilization", "0.5"]) == 0, capsys.readouterr().err
    run = seen["run"]
    assert (run.device, run.max_num_seqs, run.gpu_memory_utilization, run.batch_size) == ("cuda", 512, 0.5, None)
    assert main([*args, "--device", "cuda"]) == 2  # without --ray the GPU must be here
    assert "no CUDA GPU" in capsys.readouterr().err


# 6: shards are planned on the engine's real batch (asked of a worker), so every batch is a single-process batch
def test_shards_are_planned_on_the_engines_real_batch(monkeypatch, tmp_path):
    planned = {}

    class FakePool:
        def __init__(self, run, *args):
            self.run_ = run

        def engine_batch(self):
            return 300  # vLLM's rows per call on the worker's GPU

        def run(self, todo, vectors, indices, parts_dir, inputs, jobs_per_vector, tick, on_batch):
            planned["shards"], planned["jobs"] = todo, jobs_per_vector
            raise KeyboardInterrupt  # planning is what is under test

    class NoRay:
        def __init__(self, address):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(ray_shards, "_Pool", FakePool)
    monkeypatch.setattr(ray_shards, "_RaySession", NoRay)
    monkeypatch.setattr(ray_shards, "check_engine", lambda *a, **k: None)
    vecs = tmp_path / "v.safetensors"
    save_file({"v": torch.randn(1000, 64)}, str(vecs))
    run = DescribeRun(model="toy", source=VectorSource.parse(str(vecs)), engine="vllm", scales=(1.0, 2.0))
    with pytest.raises(KeyboardInterrupt):
        ray_shards.describe_sharded(run, tmp_path / "o.jsonl")
    shards = planned["shards"]
    assert all((s.stop - s.start) * planned["jobs"] % 300 == 0 for s in shards[:-1])
    assert shards[-1].stop == 1000 and (shards[0].stop - shards[0].start) * 2 >= 300


# 2: `describe --prompts --engine vllm` frees the HF model (loaded for the prompt states) before vLLM starts
def test_prompt_states_model_is_freed_before_vllm_starts(fake_vllm, model_dir, monkeypatch, tmp_path):
    from selfie_adapters.interpret import resumable

    loaded = []
    real_load = resumable.load_model

    def tracked(*args, **kwargs):
        model, tok = real_load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model, tok

    alive_at_start = []
    original_init = FakeLLM.__init__

    def init(self, **kwargs):
        alive_at_start.append([ref() is not None for ref in loaded])
        original_init(self, **kwargs)

    emptied = []  # torch.cuda.empty_cache must run once the model is gone, or vLLM's process does not see the memory
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append([ref() is not None for ref in loaded]))
    on_a_gpu(monkeypatch, free=139 * GIB)
    monkeypatch.setattr(resumable, "load_model", tracked)
    monkeypatch.setattr(FakeLLM, "__init__", init)
    monkeypatch.setattr(engine, "llm_kwargs", lambda folder, **kw: {"model": folder, **kw})  # no CUDA query
    prompts = tmp_path / "p.txt"
    prompts.write_text("Tell me about Paris.\nTell me about cats.\n")
    run = DescribeRun(model=str(model_dir), prompts=prompts, layer=1, engine="vllm", scales=(1.0,), max_new_tokens=4)
    resumable.describe_source(run, tmp_path / "o.jsonl")
    assert alive_at_start == [[False]]  # the one HF model was gone when vLLM started
    assert emptied == [[False]]  # and its memory returned to the device after it was gone
    assert len(fake_vllm.calls[0]) == 2

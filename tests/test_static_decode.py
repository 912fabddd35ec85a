"""The HF engine's fast path (static KV cache; CUDA graphs on a GPU) changes nothing: on CPU, in fp32, the same
greedy labels and tokens as ``generate``, log-probs within 1e-5, with rows finishing at different steps."""

import pytest
import torch

from selfie_adapters import Interpreter
from selfie_adapters.interpret.generate import generate
from selfie_adapters.interpret.static_decode import StaticDecoding, generate_static

N = 24


def stops_for(interp, soft, **kw) -> list[int]:
    """Stop ids that end some rows at steps 1..8 (and leave others running to the limit)."""
    free = generate(interp.model, [interp.prompt_ids] * len(soft), [interp.sites] * len(soft), soft,
                    max_new_tokens=10, **kw)
    return sorted({r.tokens[1 + b % 8] for b, r in enumerate(free) if b % 3 == 0})


@pytest.fixture(scope="module")
def case(tiny_model, tokenizer):
    """(interpreter, soft tokens (N, d), stop ids that end the rows at different steps)."""
    interp = Interpreter(tiny_model, tokenizer, fast_decode=False)
    soft = torch.randn(N, 64, generator=torch.Generator().manual_seed(0)) * 3
    return interp, soft, stops_for(interp, soft)


def assert_same(fast, slow):
    assert [g.tokens for g in fast] == [g.tokens for g in slow]
    assert [g.closed for g in fast] == [g.closed for g in slow]
    for f, s in zip(fast, slow):
        torch.testing.assert_close(torch.tensor(f.logprobs), torch.tensor(s.logprobs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_cache_equals_generate(case, temperature):
    interp, soft, stops = case
    gens = lambda: [torch.Generator().manual_seed(b) for b in range(N)] if temperature else None  # noqa: E731
    if temperature:
        stops = stops_for(interp, soft, temperature=temperature, top_p=0.9, generators=gens())
    kw = {"max_new_tokens": 10, "temperature": temperature, "top_p": 0.9, "stop_ids": stops}
    slow = generate(interp.model, [interp.prompt_ids] * N, [interp.sites] * N, soft, generators=gens(), **kw)
    lengths = {len(g.tokens) for g in slow}
    assert len(lengths) > 2 and any(g.closed for g in slow) and not all(g.closed for g in slow)
    fast = generate_static(StaticDecoding(interp.model), interp.prompt_ids, interp.sites, soft, generators=gens(), **kw)
    assert_same(fast, slow)


def test_fast_path_labels_equal_through_the_interpreter(tiny_model, tokenizer):
    vectors = torch.randn(10, 64, generator=torch.Generator().manual_seed(1))
    kw = {"scales": [1.0, 8.0], "max_new_tokens": 8, "batch_size": 7}
    slow = Interpreter(tiny_model, tokenizer, fast_decode=False).describe(vectors, **kw)
    fast = Interpreter(tiny_model, tokenizer, fast_decode=True).describe(vectors, **kw)
    assert [(d.label, d.text, d.closed) for d in fast] == [(d.label, d.text, d.closed) for d in slow]
    torch.testing.assert_close(torch.tensor([d.logprob for d in fast]), torch.tensor([d.logprob for d in slow]),
                               rtol=0, atol=1e-5)


def test_fast_path_with_a_deeper_injection(case):
    interp, soft, stops = case
    kw = {"inject_layer": 1, "max_new_tokens": 6, "stop_ids": stops}
    slow = generate(interp.model, [interp.prompt_ids] * N, [interp.sites] * N, soft, **kw)
    assert_same(generate_static(StaticDecoding(interp.model), interp.prompt_ids, interp.sites, soft, **kw), slow)


def test_fast_path_is_off_on_cpu_unless_asked(tiny_model, tokenizer):
    assert Interpreter(tiny_model, tokenizer).fast_decode is False
    assert Interpreter(tiny_model, tokenizer, fast_decode=True).cuda_graphs is False


@pytest.mark.slow
def test_graph_mode_buckets_and_compiled_step(case):
    """The CUDA-graph bookkeeping on CPU: fixed-shape buckets that halve as rows finish, pooled caches reused by
    the next batch, decode steps through torch.compile (backend "eager": dynamo's tracing, no compiler)."""
    interp, soft, stops = case
    kw = {"max_new_tokens": 10, "stop_ids": stops}
    slow = generate(interp.model, [interp.prompt_ids] * N, [interp.sites] * N, soft, **kw)
    decoding = StaticDecoding(interp.model, compile_backend="eager")
    for _ in range(2):  # the second batch reuses the pooled caches (a graph reads their addresses)
        assert_same(generate_static(decoding, interp.prompt_ids, interp.sites, soft, **kw), slow)
    sizes = sorted(b for b, _ in decoding._pool)
    assert sizes[-1] == 32 and all(s & (s - 1) == 0 for s in sizes) and len(sizes) >= 2  # 24 rows pad to 32


def test_a_failing_compiled_step_falls_back_to_eager(case, caplog):
    """A compiler that fails (no C++ compiler, an unsupported op) must not lose the run: the step decodes eagerly."""
    interp, soft, stops = case
    kw = {"max_new_tokens": 6, "stop_ids": stops}
    slow = generate(interp.model, [interp.prompt_ids] * N, [interp.sites] * N, soft, **kw)

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    decoding = StaticDecoding(interp.model, compile_backend=failing_backend)
    assert_same(generate_static(decoding, interp.prompt_ids, interp.sites, soft, **kw), slow)
    assert decoding._eager_only and "decoding without CUDA graphs" in caplog.text

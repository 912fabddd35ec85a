"""Micro-batching: concurrent describe jobs merge into shared batches, results stay exact, cancels drop work."""

import asyncio

import pytest
import torch

from selfie_adapters import Interpreter
from selfie_adapters.interpret import describe as describe_module
from selfie_adapters.interpret.generate import generate
from selfie_adapters.serve import DescribeJob, Scheduler, Settings
from selfie_adapters.toy import load_toy_model


@pytest.fixture(scope="module")
def interp():
    model, tok, _ = load_toy_model()
    return Interpreter(model, tok)


@pytest.fixture(scope="module")
def vectors():
    torch.manual_seed(0)
    return torch.randn(12, 128)


def same(got, want):
    """Equal rows; log-probs to float tolerance (batch composition changes the summation order)."""
    assert [(d.key, d.label, d.text, d.closed) for d in got] == [(d.key, d.label, d.text, d.closed) for d in want]
    assert [d.logprob for d in got] == pytest.approx([d.logprob for d in want], abs=1e-5)
    return True


def run(coro):
    return asyncio.run(coro)


async def with_scheduler(scheduler: Scheduler, make_jobs):
    """Queue every job before the worker starts, so what merges is deterministic."""
    jobs = make_jobs()
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    try:
        return await asyncio.gather(*(job.collect() for job in jobs))
    finally:
        scheduler.stop()


GREEDY = Settings(scales=(1.0, 2.0), max_new_tokens=8)
SAMPLED = Settings(scales=(1.5,), samples=3, temperature=1.0, seed=7, max_new_tokens=8)


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_merged_jobs_get_exactly_their_solo_results(interp, vectors, settings):
    parts = [vectors[:3], vectors[3:4], vectors[4:9]]
    scheduler = Scheduler(batch_size=64)
    merged = run(with_scheduler(scheduler, lambda: [DescribeJob(interp, v, settings) for v in parts]))
    assert scheduler.stats["batches"] == 1 and scheduler.stats["requests"] == 3  # one shared batch
    for v, got in zip(parts, merged):
        assert same(got, interp.describe(v, **settings.kwargs()))


def test_different_settings_never_share_a_batch(interp, vectors):
    scheduler = Scheduler(batch_size=64)
    greedy, sampled = run(with_scheduler(scheduler, lambda: [DescribeJob(interp, vectors[:2], GREEDY),
                                                             DescribeJob(interp, vectors[2:4], SAMPLED)]))
    assert scheduler.stats["batches"] == 2
    assert {d.scale for d in greedy} == {1.0, 2.0} and {d.sample for d in sampled} == {0, 1, 2}


def test_batches_respect_the_size_and_share_it_between_jobs(interp, vectors):
    scheduler = Scheduler(batch_size=8)  # 8 generations = 4 vectors at 2 scales
    big, small = run(with_scheduler(scheduler, lambda: [DescribeJob(interp, vectors[:10], GREEDY),
                                                        DescribeJob(interp, vectors[10:], GREEDY)]))
    # batch 1: 2 rows of big + 2 of small; then big alone: 4, 4 → 3 batches, none over 4 rows
    assert scheduler.stats["batches"] == 3 and scheduler.stats["rows"] == 12
    assert same(big, interp.describe(vectors[:10], **GREEDY.kwargs()))
    assert same(small, interp.describe(vectors[10:], **GREEDY.kwargs()))


def test_generations_per_step_are_bounded_by_logits():
    assert Scheduler(batch_size=512).step_generations(128256) == 2**24 // 128256 == 130  # Llama-3's vocabulary
    assert Scheduler(batch_size=128).step_generations(616) == 128  # a small vocabulary: batch_size binds
    assert Scheduler(max_step_logits=100).step_generations(128256) == 1  # never zero


@pytest.fixture
def forward_sizes(monkeypatch):
    """Rows of every ``generate`` call (one forward per decode step) that describe makes."""
    sizes = []

    def recording(model, prompts, *args, **kwargs):
        sizes.append(len(prompts))
        return generate(model, prompts, *args, **kwargs)

    monkeypatch.setattr(describe_module, "generate", recording)
    return sizes


@pytest.mark.parametrize(("settings", "cap"), [(GREEDY, 5), (SAMPLED, 5), (SAMPLED, 2)],
                         ids=["greedy", "sampled", "sampled-vector-over-cap"])
def test_merged_and_lone_batches_stay_under_the_logits_bound(interp, vectors, settings, cap, forward_sizes):
    vocab = interp.model.get_output_embeddings().weight.shape[0]
    scheduler = Scheduler(batch_size=64, max_step_logits=cap * vocab)  # cap generations per forward
    parts = [vectors[:3], vectors[3:4], vectors[4:9]]
    merged = run(with_scheduler(scheduler, lambda: [DescribeJob(interp, v, settings) for v in parts]))
    assert max(forward_sizes) <= cap and sum(forward_sizes) == 9 * settings.per_vector
    assert scheduler.stats["rows"] == 9 and scheduler.stats["forwards"] == len(forward_sizes)
    for v, got in zip(parts, merged):
        assert same(got, interp.describe(v, **settings.kwargs()))
    forward_sizes.clear()  # a request alone gets the same bound
    lone = Scheduler(batch_size=64, max_step_logits=cap * vocab)
    run(with_scheduler(lone, lambda: [DescribeJob(interp, vectors[:9], settings)]))
    assert max(forward_sizes) <= cap and sum(forward_sizes) == 9 * settings.per_vector


def test_cancelled_job_is_dropped_and_the_worker_goes_on(interp, vectors):
    scheduler = Scheduler(batch_size=4)

    async def scenario():
        gone, kept = DescribeJob(interp, vectors, GREEDY), DescribeJob(interp, vectors[:1], GREEDY)
        gone.cancel()
        scheduler.submit(gone)
        scheduler.submit(kept)
        scheduler.start()
        try:
            return await gone.collect(), await kept.collect()
        finally:
            scheduler.stop()

    gone_rows, kept_rows = run(scenario())
    assert gone_rows == [] and len(kept_rows) == 2
    assert scheduler.stats["cancelled_rows"] == 12 and scheduler.stats["rows"] == 1


def test_a_failing_batch_fails_its_jobs_only(interp, vectors):
    class Broken(Interpreter):
        def describe(self, *args, **kwargs):
            raise RuntimeError("boom")

    scheduler = Scheduler(batch_size=64)
    broken = Broken(interp.model, interp.tokenizer)

    async def scenario():
        bad, good = DescribeJob(broken, vectors[:2], GREEDY), DescribeJob(interp, vectors[:2], GREEDY)
        scheduler.submit(bad)
        scheduler.submit(good)
        scheduler.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await bad.collect()
            return await good.collect()
        finally:
            scheduler.stop()

    assert len(run(scenario())) == 4


def test_calls_run_on_the_model_thread_before_queued_batches(interp, vectors):
    scheduler = Scheduler(batch_size=64)
    order = []

    async def scenario():
        job = DescribeJob(interp, vectors[:1], GREEDY)
        scheduler.submit(job)
        call = asyncio.ensure_future(scheduler.call(lambda: order.append("call") or 42))
        await asyncio.sleep(0)  # the call is queued before the worker starts
        scheduler.start()
        try:
            rows = await job.collect()
            order.append("batch")
            return await call, rows
        finally:
            scheduler.stop()

    value, rows = run(scenario())
    assert value == 42 and order == ["call", "batch"] and len(rows) == 2

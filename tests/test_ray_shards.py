"""describe_sharded on a local 2-CPU Ray cluster with the toy model: the merged output is the single-process
`selfie describe` output byte for byte, a worker killed mid-shard loses nothing, a finished shard is never redone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters.cli import main
from selfie_adapters.engines.ray_shards import describe_sharded, plan_shards
from selfie_adapters.errors import SelfieError
from selfie_adapters.interpret.resumable import DescribeRun
from selfie_adapters.vectors.source import VectorSource

N, BATCH, NEW_TOKENS = 12, 4, 8  # greedy: 6 baseline scales → 72 rows; 2 vectors = 12 rows = 3 whole batches
SAMPLED = {"scales": (1.0, 2.0), "samples": 2, "temperature": 0.8}  # 4 rows a vector: 4 vectors = 4 batches


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vectors") / "v.safetensors"
    save_file({"vectors": torch.randn(N, 128)}, path)
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def toy_run(vectors_file: Path, **settings) -> DescribeRun:
    return DescribeRun(model="toy", source=VectorSource.parse(str(vectors_file)), batch_size=BATCH,
                       max_new_tokens=NEW_TOKENS, **settings)


def cli_describe(vectors_file: Path, out: Path, *, scales=(), samples=1, temperature=0.0) -> None:
    """`selfie describe` in this process with one torch thread, as each CPU worker runs."""
    args = ["describe", "--model", "toy", "--vectors", str(vectors_file), "--out", str(out), "--batch-size",
            str(BATCH), "--max-new-tokens", str(NEW_TOKENS), "--samples", str(samples), "--temperature",
            str(temperature), *[a for s in scales for a in ("--scale", str(s))],
            "--threads", "1"]  # CPU matmuls round differently with other thread counts (last bits of logprob)
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)


def assert_same_files(ours: Path, single: Path) -> None:
    """Rows and settings record byte for byte, and no parts left behind."""
    assert ours.read_bytes() == single.read_bytes()
    assert ours.with_name(ours.name + ".settings.json").read_text() == \
        single.with_name(single.name + ".settings.json").read_text()
    assert not ours.with_name(ours.name + ".parts").exists()


@pytest.fixture(scope="module")
def single(vectors_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "labels.jsonl"
    cli_describe(vectors_file, out)
    return out


@pytest.mark.parametrize("vectors, jobs, batch, size, want", [
    (12, 6, 4, 2, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]),
    (10, 6, 4, 3, [(0, 4), (4, 8), (8, 10)]),  # 3 vectors = 18 rows, not whole batches of 4: 4 vectors
    (5, 1, 32, 1, [(0, 5)]),
    (7, 64, 32, 3, [(0, 3), (3, 6), (6, 7)]),
])
def test_shards_hold_whole_batches(vectors, jobs, batch, size, want):
    shards = plan_shards(vectors, jobs, batch, size)
    assert [(s.start, s.stop) for s in shards] == want
    assert all(s.start * jobs % batch == 0 for s in shards)


def test_a_partial_single_process_output_is_refused(vectors_file, single, tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text("".join(single.read_text().splitlines(keepends=True)[:4]))
    (tmp_path / "labels.jsonl.settings.json").write_text(single.with_name("labels.jsonl.settings.json").read_text())
    with pytest.raises(SelfieError, match="holds 4 of 72 rows from a single-process run; finish it without Ray"):
        describe_sharded(toy_run(vectors_file), out)


def test_prompts_are_refused_with_the_two_step_recipe(tmp_path):
    run = DescribeRun(model="toy", prompts=tmp_path / "prompts.txt", layer=1)
    with pytest.raises(SelfieError, match="extract their states first"):
        describe_sharded(run, tmp_path / "labels.jsonl")


@pytest.mark.slow
def test_two_workers_write_the_single_process_bytes(vectors_file, single, ray_cluster, tmp_path):
    out = describe_sharded(toy_run(vectors_file), tmp_path / "labels.jsonl", num_workers=2, shard_vectors=2)
    assert_same_files(out, single)
    events = []
    describe_sharded(toy_run(vectors_file), out, num_workers=2, shard_vectors=2, on_batch=events.append)
    assert events == []  # complete: nothing is described again
    cli_describe(vectors_file, out)  # the single-process command sees a finished run of its own
    assert_same_files(out, single)


@pytest.mark.slow
def test_a_worker_killed_mid_shard_loses_nothing(vectors_file, ray_cluster, tmp_path):
    cli_describe(vectors_file, tmp_path / "single.jsonl", **SAMPLED)
    events = []

    def kill_once(event):
        events.append(event)
        if event.shard == 1 and event.attempt == 0 and event.shard_done < event.shard_total:
            os.kill(event.worker_pid, signal.SIGKILL)  # its first batch is on disk; it runs <= 2 batches ahead

    out = describe_sharded(toy_run(vectors_file, **SAMPLED), tmp_path / "labels.jsonl", num_workers=2,
                           shard_vectors=4, on_batch=kill_once)
    assert_same_files(out, tmp_path / "single.jsonl")
    shard1 = [e for e in events if e.shard == 1]
    assert {e.attempt for e in shard1} == {0, 1} and len({e.worker_pid for e in shard1}) == 2
    assert sum(e.rows for e in shard1) == shard1[0].shard_total  # resumed its part: no row described twice


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_finished_shard_is_never_redone(vectors_file, single, ray_cluster, tmp_path):
    out = tmp_path / "labels.jsonl"

    def stop_after_a_shard(event):
        if event.shard_done == event.shard_total:
            raise Interrupt  # the driver dies (Ctrl-C, a lost head node): the parts stay on disk

    with pytest.raises(Interrupt):
        describe_sharded(toy_run(vectors_file), out, num_workers=2, shard_vectors=2, on_batch=stop_after_a_shard)
    parts = {int(p.stem.split("-")[1]): len(p.read_text().splitlines())
             for p in (tmp_path / "labels.jsonl.parts").glob("*.jsonl")}
    assert 12 in parts.values() and not out.exists()
    events = []
    describe_sharded(toy_run(vectors_file), out, num_workers=2, shard_vectors=2, on_batch=events.append)
    assert_same_files(out, single)
    assert not {e.shard for e in events} & {n for n, rows in parts.items() if rows == 12}
    for n, rows in parts.items():  # a half-done shard describes only the rows it lacks
        assert sum(e.rows for e in events if e.shard == n) == 12 - rows


@pytest.mark.slow
def test_a_worker_that_cannot_load_fails_the_run_at_once(vectors_file, ray_cluster, tmp_path):
    run = DescribeRun(model="./no-such-model", source=VectorSource.parse(str(vectors_file)), batch_size=BATCH)
    with pytest.raises(SelfieError, match="model folder not found: ./no-such-model"):
        describe_sharded(run, tmp_path / "labels.jsonl", num_workers=1, shard_vectors=6)


@pytest.mark.slow
def test_a_torn_multi_row_write_is_cut_back_to_whole_batches(vectors_file, single, ray_cluster, tmp_path):
    out = tmp_path / "labels.jsonl"

    def stop_at_first_batch_of_shard_0(event):
        if event.shard == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        describe_sharded(toy_run(vectors_file), out, num_workers=2, shard_vectors=2,
                         on_batch=stop_at_first_batch_of_shard_0)
    part = tmp_path / "labels.jsonl.parts" / "shard-00000.jsonl"
    assert len(part.read_text().splitlines()) == BATCH
    with open(part, "a") as f:  # the driver died inside a multi-row write: half of the next batch landed
        f.writelines(single.read_text().splitlines(keepends=True)[BATCH:BATCH + 2])
    events = []
    describe_sharded(toy_run(vectors_file), out, num_workers=2, shard_vectors=2, on_batch=events.append)
    assert_same_files(out, single)
    assert sum(e.rows for e in events if e.shard == 0) == 12 - BATCH  # the half batch was described again, whole


@pytest.mark.slow
def test_cli_ray_flag_gives_the_single_process_bytes(vectors_file, single, ray_cluster, tmp_path):
    out = tmp_path / "labels.jsonl"
    assert main(["describe", "--model", "toy", "--vectors", str(vectors_file), "--out", str(out), "--batch-size",
                 str(BATCH), "--max-new-tokens", str(NEW_TOKENS), "--ray", "local", "--workers", "2",
                 "--shard-vectors", "2"]) == 0
    assert_same_files(out, single)

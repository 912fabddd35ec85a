"""`selfie describe` on many GPUs and nodes with Ray: contiguous shards, one owned part each, one merged output.

The vector rows are cut into contiguous shards whose job counts (vectors × scales × samples) are
multiples of ``batch_size``, so every batch a worker runs is a batch the single-process run runs
and the merged rows are byte-identical to it. A pool of stateful Ray actors (one per GPU, or per CPU
slot) each load the model once, then describe shard after shard as a streaming generator: one list
of rows per batch. Only the driver writes files: each batch is appended to
``OUT.parts/shard-NNNNN.jsonl``, a resumable :class:`JsonlLog` whose settings record is the run's
inputs plus the shard's range, so no shared file system is needed and a dead worker loses only the
batches in flight (at most ``STREAM_AHEAD``). A shard whose part holds all its rows is never redone;
a shard whose worker died (``ActorDiedError``, ``WorkerCrashedError``, a lost node) goes to a fresh
actor and resumes its part.
When every shard is done the parts are concatenated in shard order into OUT (atomically), under the
settings record a single-process ``selfie describe`` writes: rerunning either command on OUT does
nothing.

Why a pool of actors, not Ray Data or tasks: a task per shard would reload an 8B model per shard;
``map_batches`` with a class UDF is the same actor pool, but Ray Data owns the batching, block order,
retries and the sink, so it can neither keep our exact batches, nor resume a half-done shard from its
part, nor skip finished shards after the driver restarts. ``ray.data.llm``'s vLLM processor cannot take
prompt embeddings (soft tokens) at all.

>>> run = DescribeRun(model="meta-llama/Llama-3.1-8B-Instruct", adapter="goodfire-sae-scalar-affine.safetensors",
...                   source=VectorSource.parse("sae-lens:goodfire-llama-3.1-8b-instruct/layer_19"),
...                   features=range(65536), dtype="bfloat16", device="cuda", batch_size=64)
>>> describe_sharded(run, "labels.jsonl", address="auto")  # one actor per GPU of the cluster
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..adapters.artifact import Adapter, load_adapter
from ..errors import SelfieError
from ..files import atomic_path, remove_stale_temps
from ..interpret.describe import BASELINE_SCALES
from ..interpret.resumable import KEY_FIELDS, DescribeRun, Progress, _mean_vector, row_key
from ..runs.fingerprint import resolve_settings
from ..runs.outputs import OutputLock, Record
from ..runs.row_log import JsonlLog
from ..vectors.rows import drop_zero_rows, write_skipped
from .choice import check_engine

log = logging.getLogger(__name__)
COMMAND = "describe"  # the parts and OUT are `selfie describe` outputs: the same rows, the same record
RAY_INSTALL = "pip install 'ray>=2.60'  (the version this was tested with)"
STREAM_AHEAD = 2  # batches a worker may run ahead of the driver's writes (Ray's generator backpressure)
MAX_SHARD_VECTORS = 256  # default shard size: at most this, and about 64 shards when there are fewer vectors


@dataclass(frozen=True)
class Shard:
    """Vector rows ``start:stop`` of the input; its part holds their (index, scale, sample) rows."""

    number: int
    start: int
    stop: int


@dataclass(frozen=True)
class BatchWritten:
    """What ``on_batch`` is told after each batch is appended to a part."""

    shard: int
    rows: int  # rows in this batch
    shard_done: int  # rows of this shard now on disk
    shard_total: int
    attempt: int  # 0 the first time the shard runs in this call, 1 after its worker died once, ...
    worker_pid: int
    worker_node: str


def plan_shards(num_vectors: int, jobs_per_vector: int, batch_size: int, shard_vectors: int) -> list[Shard]:
    """Contiguous shards of about ``shard_vectors`` rows, rounded up so each shard's job count is a
    multiple of ``batch_size`` (then every batch is one of the single-process run's batches).

    >>> [(s.start, s.stop) for s in plan_shards(10, 6, 4, 3)]
    [(0, 4), (4, 8), (8, 10)]
    """
    unit = batch_size // math.gcd(batch_size, jobs_per_vector)  # fewest vectors that fill whole batches
    size = max(unit, -(-shard_vectors // unit) * unit)
    if size != shard_vectors:
        log.info("shards of %d vectors: a multiple of %d keeps batches of %d whole", size, unit, batch_size)
    return [Shard(n, start, min(start + size, num_vectors)) for n, start in enumerate(range(0, num_vectors, size))]


def default_scales(adapter: Adapter | None) -> tuple[float, ...]:
    """The scales ``Interpreter.default_scales`` sweeps, known before any model loads."""
    return BASELINE_SCALES if adapter is None or adapter.kind == "identity" else (1.0,)


class DescribeWorker:
    """One engine per Ray actor: the model loads once, then shard after shard is described.

    A load error is kept and raised by the first call, so the driver tells a bad input (the run
    fails at once) from a dead process (its shard is retried).
    """

    def __init__(self, run: DescribeRun, adapter: Adapter | None, mean: torch.Tensor | None, threads: int) -> None:
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(threads)  # oversubscribed CPUs make torch several times slower
        hf_logging.disable_progress_bar()  # a worker's bars would only interleave in the driver's log
        self.run, self.error = run, None
        try:
            self.interp = _interpreter(run, adapter, mean)
        except Exception as e:  # noqa: BLE001 - raised again by the first call
            self.error = e

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def describe(self, vectors: torch.Tensor, indices: list[int], skip: list[tuple]) -> Iterator[list[dict]]:
        """The rows of one shard not in ``skip``, one list per batch (a Ray streaming generator)."""
        if self.error is not None:
            raise self.error
        r = self.run
        for batch in self.interp.iter_describe(vectors, indices=indices, skip=skip, scales=r.scales,
                                               samples=r.samples, max_new_tokens=r.max_new_tokens,
                                               temperature=r.temperature, top_p=r.top_p, seed=r.seed,
                                               batch_size=r.batch_size, relevancy=r.relevancy):
            yield [d.to_row() for d in batch]


def _interpreter(run: DescribeRun, adapter: Adapter | None, mean: torch.Tensor | None):
    from ..interpret.resumable import open_engine

    return open_engine(run, adapter, mean)  # run.engine travels with the run: each worker opens hf or vllm


def describe_sharded(run: DescribeRun, out: str | os.PathLike, *, address: str | None = None,
                     num_workers: int | None = None, shard_vectors: int | None = None,
                     worker_options: dict | None = None, threads: int | None = None, max_retries: int = 3,
                     overwrite: bool = False, keep_parts: bool = False, progress: Progress | None = None,
                     on_batch: Callable[[BatchWritten], None] | None = None) -> Path:
    """Describe ``run``'s vectors into ``out`` with a pool of Ray actors; the same file, byte for byte, as
    ``describe_source(run, out)``, and resumable the same way (a rerun does only what is missing).

    ``address``: the Ray cluster (``"auto"``: the one this machine belongs to, or ``"HEAD_IP:6379"``;
    None: ``RAY_ADDRESS``, else a new local one); a Ray already initialised is used as it is.
    ``num_workers``: actors (default: as many as the cluster holds). ``worker_options``: Ray actor
    options of each (default ``{"num_gpus": 1}`` for a CUDA ``run.device``, else ``{"num_cpus": 1}``;
    add e.g. ``runtime_env``). ``threads``: torch threads per worker (default: its CPUs, at least 1).
    ``shard_vectors``: vectors per shard (rounded up to whole batches; keep it when resuming).
    ``max_retries``: times one shard may lose its worker before the run fails. ``progress`` as in
    ``describe_source``; ``on_batch`` sees every appended batch with its shard and worker.
    """
    run = run.with_defaults()
    check_engine(run.engine, run.model, inject_layer=run.inject_layer, relevancy=run.relevancy)
    adapter = load_adapter(run.adapter) if run.adapter else None
    named, (vectors, indices) = _vectors(run)
    mean = _mean_vector(run.mean_vectors, run.layer)
    run = _with_scales(run, adapter)
    jobs_per_vector = len(run.scales) * run.samples
    inputs = resolve_settings(run.inputs(None))  # fingerprints once; the parts and OUT record the same
    out = Path(out)
    parts_dir = out.with_name(out.name + ".parts")
    with JsonlLog(out, inputs, command=COMMAND, key_fields=KEY_FIELDS, overwrite=overwrite,
                  about=run.about()) as final:
        if overwrite:
            _remove_parts(parts_dir)
        write_skipped(out, named, indices, run.source.row_name)
        if not _already_complete(final, out, len(vectors) * jobs_per_vector):
            size = shard_vectors or min(MAX_SHARD_VECTORS, -(-len(vectors) // 64))
            shards = plan_shards(len(vectors), jobs_per_vector, run.batch_size, size)
            done = {s.number: _part_rows(parts_dir, s, inputs, run.batch_size, jobs_per_vector) for s in shards}
            todo = [s for s in shards if done[s.number] < (s.stop - s.start) * jobs_per_vector]
            log.info("%d of %d shards to describe", len(todo), len(shards))
            tick = progress(len(vectors) * jobs_per_vector, sum(done.values())) if progress else None
            if todo:
                with _RaySession(address):
                    pool = _Pool(run, adapter, mean, num_workers, worker_options, threads, max_retries)
                    pool.run(todo, vectors, indices, parts_dir, inputs, jobs_per_vector, tick, on_batch)
            _merge(out, [_part_path(parts_dir, s) for s in shards], inputs, run.about())
        if not keep_parts:
            _remove_parts(parts_dir)
    return out


def _vectors(run: DescribeRun) -> tuple[list[int], tuple[torch.Tensor, list[int]]]:
    """(the rows asked for, (the non-zero vectors, their indices))."""
    if run.prompts is not None:
        raise SelfieError("describing --prompts with Ray is not supported: extract their states first "
                          "(selfie extract --layer L --prompts FILE --out states.safetensors), then describe "
                          "--vectors states.safetensors#layer_L")
    if run.source is None:
        raise SelfieError("give a vector source: --vectors FILE[#KEY] or --vectors sae-lens:RELEASE/ID "
                          "[--features 0-99]")
    loaded, named = run.source.load(run.features)
    return named, drop_zero_rows(loaded, named, run.source.row_name)


def _with_scales(run: DescribeRun, adapter: Adapter | None) -> DescribeRun:
    return replace(run, scales=tuple(float(s) for s in (run.scales or default_scales(adapter))))


def _already_complete(final: JsonlLog, out: Path, total: int) -> bool:
    """OUT holds every row (a finished run); a partial OUT is a single-process run's, never ours."""
    rows = len(final.rows)
    if rows == total:
        log.info("%s is already complete (same inputs); nothing to do", out)
        return True
    if rows:
        raise SelfieError(f"{out} holds {rows} of {total} rows from a single-process run; finish it without Ray "
                          "(rerun `selfie describe` without --ray) or pass --overwrite to start over with Ray")
    return False


def _part_path(parts_dir: Path, shard: Shard) -> Path:
    return parts_dir / f"shard-{shard.number:05d}.jsonl"


def _open_part(parts_dir: Path, shard: Shard, inputs: dict, batch_size: int, jobs_per_vector: int) -> JsonlLog:
    """The shard's part, cut back to whole batches so a resumed shard runs the single-process batches
    (only a driver killed inside a multi-row write leaves part of a batch; JsonlLog drops a torn line)."""
    path = _part_path(parts_dir, shard)
    record = {**inputs, "shard": {"number": shard.number, "rows": [shard.start, shard.stop], "batch_size": batch_size}}
    part = JsonlLog(path, record, command=COMMAND, key_fields=KEY_FIELDS)
    keep = len(part.rows) - len(part.rows) % batch_size
    if len(part.rows) not in (keep, (shard.stop - shard.start) * jobs_per_vector):
        data, cut = path.read_bytes(), 0
        for _ in range(keep):
            cut = data.index(b"\n", cut) + 1
        os.truncate(path, cut)
        del part.rows[keep:]
    return part


def _part_rows(parts_dir: Path, shard: Shard, inputs: dict, batch_size: int, jobs_per_vector: int) -> int:
    if not _part_path(parts_dir, shard).exists():
        return 0
    with _open_part(parts_dir, shard, inputs, batch_size, jobs_per_vector) as part:
        return len(part.rows)


@dataclass
class _Running:
    """A shard in flight: its worker, its open part, and how many rows it must end with."""

    worker: tuple  # (actor handle, ref of its info())
    shard: Shard
    part: JsonlLog
    attempt: int
    expected: int


class _Pool:
    """Actors that describe shards, one shard each at a time; a dead one is replaced and its shard requeued."""

    def __init__(self, run: DescribeRun, adapter: Adapter | None, mean: torch.Tensor | None,
                 num_workers: int | None, worker_options: dict | None, threads: int | None, max_retries: int):
        import ray

        cuda = str(run.device or "cpu").startswith("cuda")
        self.options = worker_options or ({"num_gpus": 1} if cuda else {"num_cpus": 1})
        self.size = num_workers or _cluster_slots(self.options)
        threads = threads or max(1, int(self.options.get("num_cpus", 1)))
        # no Ray-side restarts or retries: a retried stream would yield its rows again; the driver resumes parts
        self.actor = ray.remote(DescribeWorker).options(max_restarts=0, max_task_retries=0, **self.options)
        self.args = [*(ray.put(a) for a in (run, adapter, mean)), threads]  # shipped once: no files on workers
        self.batch_size, self.max_retries = run.batch_size, max_retries

    def spawn(self) -> tuple:
        """A new actor and the ref of its ``info()`` (ready once its model has loaded)."""
        worker = self.actor.remote(*self.args)
        return worker, worker.info.remote()

    def run(self, todo: list[Shard], vectors: torch.Tensor, indices: list[int], parts_dir: Path, inputs: dict,
            jobs_per_vector: int, tick: Callable[[int], None] | None,
            on_batch: Callable[[BatchWritten], None] | None) -> None:
        """Keep every worker busy with one shard; append each batch as it arrives; requeue a dead worker's shard."""
        import ray

        queue, attempts, running, refs = deque(todo), dict.fromkeys((s.number for s in todo), 0), {}, {}
        idle = [self.spawn() for _ in range(min(self.size, len(todo)))]
        try:
            while queue or running:
                while queue and idle:
                    shard, worker = queue.popleft(), idle.pop()
                    ref = refs.setdefault(shard.number, ray.put(vectors[shard.start:shard.stop].contiguous()))
                    gen, job = self._submit(worker, shard, ref, indices, parts_dir, inputs, jobs_per_vector,
                                            attempts[shard.number])
                    running[gen] = job
                [gen], _ = ray.wait(list(running), num_returns=1)
                job = running[gen]
                outcome = _take(gen, job, tick, on_batch)
                if outcome == "batch":
                    continue
                del running[gen]
                job.part.close()
                if outcome == "done":
                    refs.pop(job.shard.number)
                    idle.append(job.worker)
                else:
                    attempts[job.shard.number] += 1
                    self._check_attempts(job, attempts[job.shard.number], outcome)
                    ray.kill(job.worker[0])
                    idle.append(self.spawn())  # a fresh actor (on any node with room); the shard resumes its part
                    queue.appendleft(job.shard)
        finally:
            for job in running.values():
                job.part.close()
                ray.kill(job.worker[0])
            for worker in idle:
                ray.kill(worker[0])

    def _submit(self, worker: tuple, shard: Shard, ref, indices: list[int], parts_dir: Path, inputs: dict,
                jobs_per_vector: int, attempt: int):
        """Open the shard's part (resuming it) and start the worker's stream of the rows it lacks."""
        part = _open_part(parts_dir, shard, inputs, self.batch_size, jobs_per_vector)
        skip = sorted(part.done_keys(row_key))
        stream = worker[0].describe.options(num_returns="streaming", _generator_backpressure_num_objects=STREAM_AHEAD)
        gen = stream.remote(ref, indices[shard.start:shard.stop], skip)
        return gen, _Running(worker, shard, part, attempt, (shard.stop - shard.start) * jobs_per_vector)

    def _check_attempts(self, job: _Running, attempts: int, why: str) -> None:
        s = job.shard
        if attempts > self.max_retries:
            raise SelfieError(f"shard {s.number} (vector rows {s.start}:{s.stop}) lost its worker {attempts} times "
                              f"(last: {why}); see the Ray logs. Rerun the same command to resume: finished shards "
                              "and written rows are kept")
        log.warning("the worker of shard %d died (%s); it resumes on a fresh worker", s.number, why)


def _take(gen, job: _Running, tick: Callable[[int], None] | None,
          on_batch: Callable[[BatchWritten], None] | None) -> str:
    """Append the next batch of a ready stream: "batch", or "done", or the name of the error that lost the worker."""
    import ray
    from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

    try:
        rows = ray.get(next(gen))
    except StopIteration:
        if len(job.part.rows) != job.expected:
            raise SelfieError(f"shard {job.shard.number} ended with {len(job.part.rows)} of {job.expected} rows; "
                              "this is a bug, please report it") from None
        return "done"
    except (RayActorError, WorkerCrashedError, ObjectLostError) as e:
        return type(e).__name__
    except RayTaskError as e:  # our code failed on the worker: a retry would fail the same way
        if isinstance(e.cause, SelfieError):
            raise SelfieError(str(e.cause)) from None
        raise
    job.part.append(rows)
    if tick is not None:
        tick(len(rows))
    if on_batch is not None:
        info = ray.get(job.worker[1])
        on_batch(BatchWritten(job.shard.number, len(rows), len(job.part.rows), job.expected, job.attempt,
                              info["pid"], info["node"]))
    return "batch"


def _cluster_slots(options: dict) -> int:
    """How many workers with ``options`` the cluster holds at once (its GPUs, or its CPU slots)."""
    import ray

    res = ray.cluster_resources()
    if options.get("num_gpus"):
        return max(1, int(res.get("GPU", 0) // options["num_gpus"]))
    return max(1, int(res.get("CPU", 1) // max(options.get("num_cpus", 1), 1)))


class _RaySession:
    """Use the Ray already initialised, or connect to ``address`` / ``RAY_ADDRESS``, or start a local one;
    shut down only a Ray started here."""

    def __init__(self, address: str | None) -> None:
        self.address, self.ours = address, False

    def __enter__(self) -> _RaySession:
        try:
            import ray
        except ImportError:
            raise SelfieError(f"describing with Ray needs Ray: {RAY_INSTALL}") from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self.ours = True
        return self

    def __exit__(self, *exc) -> None:
        if self.ours:
            import ray

            ray.shutdown()


def _merge(out: Path, parts: list[Path], inputs: dict, about: dict | None = None) -> None:
    """Concatenate the parts into OUT atomically. The record goes first: a kill between the two leaves an
    empty OUT of ours (the next run merges again), never rows without a record."""
    Record(out, COMMAND).write(inputs, about)
    with atomic_path(out) as tmp, open(tmp, "wb") as dst:
        for path in parts:
            with open(path, "rb") as src:
                while block := src.read(1 << 20):
                    dst.write(block)


def _remove_parts(parts_dir: Path) -> None:
    """Delete the parts we wrote, their records, the temp files and locks a killed run left; anything else in
    the folder stays (and so does the folder). Called while holding OUT's lock."""
    if not parts_dir.is_dir():
        return
    for path in parts_dir.glob("shard-[0-9][0-9][0-9][0-9][0-9].jsonl*"):
        if path.name.endswith((".jsonl", ".jsonl.settings.json")) and path.is_file():
            path.unlink()
        elif path.name.endswith(".jsonl.lock") and path.is_file():
            with suppress(SelfieError, OSError):  # a worker that outlived its driver still holds it: leave it
                OutputLock(path.with_suffix("")).acquire().release()  # releasing removes it
    remove_stale_temps(parts_dir, owned=True)
    if not any(parts_dir.iterdir()):
        parts_dir.rmdir()

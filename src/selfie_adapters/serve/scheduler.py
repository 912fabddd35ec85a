"""Micro-batching: one worker thread owns the model and merges concurrent describe (and ask) requests.

Requests become ``DescribeJob``s (vectors + settings). The worker waits a few milliseconds while
requests keep arriving, then takes rows from every queued job whose settings match the oldest
job's, up to ``Scheduler.step_generations`` generations (``batch_size``, fewer when the logits of
one decode step would pass ``MAX_STEP_LOGITS``), runs one ``Interpreter.describe`` over them, and
hands each job its rows. A request alone is cut to the same bound, so a merged batch is never
larger than what a big enough request would run alone. Jobs that still have rows go to the back of
the queue, so a large request cannot starve small ones. A cancelled job (its client left) is
dropped before its next rows run. Forward passes that are not describes (extract, lens) run on the
same thread through ``Scheduler.call``, ahead of describe batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import torch

from ..interpret.describe import Description, Interpreter
from ..models.tree import logits_width

log = logging.getLogger(__name__)
_DONE = object()

MAX_STEP_LOGITS = 2**24
"""Generations × vocabulary that one decode step of a describe batch may hold: 2^24 fp32 logits, 64 MiB.

Every step writes a (generations, V) logits tensor and reads it again for the max and the
log-sum-exp. Past some tens of MiB that traffic no longer stays in cache and a generation costs
more the more of them share the step: merged batches of 768 generations at Llama-3's 128k
vocabulary (393 MB a step) ran 0.69x as fast as the same requests one at a time. The bound scales
with the vocabulary, which the worker reads off the model: 130 generations at 128k, the whole
``batch_size`` for the toy model's 616 tokens.
"""


@dataclass(frozen=True)
class Settings:
    """Generation settings shared by every row of a describe batch (jobs merge only when equal)."""

    scales: tuple[float, ...]
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 40
    seed: int = 0
    relevancy: bool = False
    # set for /ask: the question asked instead of describing (``Interpreter.ask``), and its choices if scored
    question: str | None = None
    choices: tuple[str, ...] | None = None
    answer_prefix: str = ""

    @property
    def per_vector(self) -> int:
        return len(self.scales) * self.samples

    def run(self, interp: Interpreter, vectors: torch.Tensor, indices: list[int], batch_size: int) -> list:
        """Describe the vectors, or ask them the question: one row per vector × scale × sample, in input order."""
        if self.question is None:
            return interp.describe(vectors, indices=indices, batch_size=batch_size, **self.kwargs())
        return interp.ask(vectors, self.question, choices=self.choices, answer_prefix=self.answer_prefix,
                          indices=indices, batch_size=batch_size, **self.kwargs())

    def kwargs(self) -> dict:
        return {"scales": self.scales, "samples": self.samples, "temperature": self.temperature,
                "top_p": self.top_p, "max_new_tokens": self.max_new_tokens, "seed": self.seed,
                "relevancy": self.relevancy}


class DescribeJob:
    """Vectors (N, d) to describe with one interpreter and one ``Settings``; results arrive as an async stream.

    Row ``r`` keeps the index ``indices[r]`` (default r), so seeded sampling gives the same rows
    whether the job runs alone or merged with others.
    """

    def __init__(self, interpreter: Interpreter, vectors: torch.Tensor, settings: Settings,
                 indices: Sequence[int] | None = None) -> None:
        self.interpreter, self.vectors, self.settings = interpreter, vectors, settings
        self.vocab_size = logits_width(interpreter.model)  # read here: a bad model fails its request, not the worker
        self.indices = list(range(len(vectors))) if indices is None else list(indices)
        self.next_row = 0
        self.cancelled = False
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def key(self) -> tuple:
        return (id(self.interpreter), self.settings)

    def cancel(self) -> None:
        """Stop describing this job's remaining rows (called when the client disconnects)."""
        self.cancelled = True

    async def stream(self) -> AsyncIterator[list[Description]]:
        """Descriptions in row order, one list per worker batch; raises the worker's error if one occurred."""
        while True:
            item = await self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def collect(self) -> list[Description]:
        out: list[Description] = []
        async for chunk in self.stream():
            out.extend(chunk)
        return out

    def _put(self, item) -> None:  # called from the worker thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)


class Scheduler:
    """The single model worker: ``submit`` describe jobs, ``call`` other model work; see module docstring."""

    def __init__(self, batch_size: int = 128, wait_s: float = 0.005, max_step_logits: int = MAX_STEP_LOGITS) -> None:
        self.batch_size, self.wait_s, self.max_step_logits = batch_size, wait_s, max_step_logits
        self.stats: Counter = Counter()
        self._jobs: deque[DescribeJob] = deque()
        self._calls: deque[tuple[Callable, concurrent.futures.Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._last_submit = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="selfie-model-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, job: DescribeJob) -> DescribeJob:
        with self._cond:
            self.stats["requests"] += 1
            self._last_submit = time.monotonic()
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    async def call(self, fn: Callable, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` on the model thread; cancelling the await skips it if not started."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._calls.append((lambda: fn(*args, **kwargs), future))
            self._cond.notify_all()
        return await asyncio.wrap_future(future)

    def step_generations(self, vocab_size: int) -> int:
        """Generations one forward may hold: ``batch_size``, and at most ``max_step_logits // vocab_size``
        (at least 1), alike for a merged batch and a request alone.

        >>> Scheduler(batch_size=128).step_generations(128256)  # Llama-3's vocabulary
        128
        >>> Scheduler(batch_size=512).step_generations(128256)
        130
        """
        return max(1, min(self.batch_size, self.max_step_logits // vocab_size))

    def pending_rows(self) -> int:
        with self._cond:
            return sum(len(j) - j.next_row for j in self._jobs)

    # --- worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._jobs or self._calls):
                    self._cond.wait()
                if self._stopping:
                    return
                call = self._calls.popleft() if self._calls else None
                parts = [] if call else self._next_batch()
            if call is not None:
                self._run_call(*call)
            elif parts:
                self._run_batch(parts)

    def _run_call(self, fn: Callable, future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as e:  # handed to the awaiting request, never kills the worker
            future.set_exception(e)

    def _next_batch(self) -> list[tuple[DescribeJob, int, int]]:
        """(job, first row, end row) parts sharing the oldest job's settings; holds the lock."""
        self._drop_cancelled()
        if not self._jobs:
            return []
        self._gather(self._jobs[0])
        self._drop_cancelled()
        if not self._jobs:
            return []
        head = self._jobs[0]
        budget = self._vector_budget(head)  # rows in this batch
        mates = [j for j in self._jobs if j.key == head.key]
        parts = []
        for n, job in enumerate(mates):  # share the budget evenly; small jobs leave room for later ones
            fair = max(1, budget // (len(mates) - n))
            take = min(len(job) - job.next_row, fair, budget)
            if take <= 0:
                break
            parts.append((job, job.next_row, job.next_row + take))
            job.next_row += take
            budget -= take
        for job, _, _ in parts:  # unfinished jobs go to the back: round robin between requests
            self._jobs.remove(job)
            if job.next_row < len(job):
                self._jobs.append(job)
        return parts

    def _gather(self, head: DescribeJob) -> None:
        """Let concurrent requests join the batch: wait until it is full, or no request arrived for
        ``wait_s``, or ``4 · wait_s`` passed (holds the lock; ``wait`` releases it)."""
        start = time.monotonic()
        while not self._stopping and self._free_rows(head) > 0:
            until = min(max(self._last_submit, start) + self.wait_s, start + 4 * self.wait_s)
            now = time.monotonic()
            if now >= until:
                return
            self._cond.wait(until - now)

    def _free_rows(self, head: DescribeJob) -> int:
        rows = sum(len(j) - j.next_row for j in self._jobs if j.key == head.key)
        return max(0, self._vector_budget(head) - rows)

    def _vector_budget(self, job: DescribeJob) -> int:
        """Vectors in one batch of ``job``'s kind: as many as fit in one forward, at least one (whose
        generations ``describe`` then splits into several forwards)."""
        return max(1, self.step_generations(job.vocab_size) // job.settings.per_vector)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.cancelled]:
            self._jobs.remove(job)
            self.stats["cancelled_rows"] += len(job) - job.next_row
            job._put(_DONE)

    def _run_batch(self, parts: list[tuple[DescribeJob, int, int]]) -> None:
        head = parts[0][0]
        interp, settings, step = head.interpreter, head.settings, self.step_generations(head.vocab_size)
        vectors = torch.cat([job.vectors[a:b] for job, a, b in parts])  # (rows, d)
        indices = [i for job, a, b in parts for i in job.indices[a:b]]
        start = time.perf_counter()
        try:
            descs = settings.run(interp, vectors, indices, step)
            chunks = _split(descs, parts, settings.per_vector)
        except Exception as e:  # the requests in this batch fail; the server keeps serving
            log.exception("describe batch failed")
            for job, _, _ in parts:
                job._put(e)
            return
        self.stats["model_seconds"] += time.perf_counter() - start
        self.stats["batches"] += 1
        self.stats["rows"] += len(vectors)
        self.stats["generations"] += len(descs)
        self.stats["forwards"] += -(-len(descs) // step)
        for (job, _, end), chunk in zip(parts, chunks):
            job._put(chunk)
            if end == len(job):
                job._put(_DONE)


def _split(descs: list[Description], parts: list[tuple[DescribeJob, int, int]], per: int) -> list[list[Description]]:
    """Cut a merged batch's rows back into per-job chunks (describe returns rows in input order)."""
    chunks, start = [], 0
    for job, a, b in parts:
        chunk = descs[start:start + (b - a) * per]
        start += (b - a) * per
        expected = [i for i in job.indices[a:b] for _ in range(per)]
        if [d.index for d in chunk] != expected:
            raise RuntimeError("describe returned rows out of input order; cannot split a merged batch")
        chunks.append(chunk)
    return chunks

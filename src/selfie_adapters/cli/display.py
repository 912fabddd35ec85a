"""What the CLI shows: the stderr console, progress bars and summary tables (the library never prints)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ..evals.report import fmt

console = Console(stderr=True)
SLOW_LOAD_S = 2.0  # a model load that takes longer gets a "loading MODEL…" line, then its time


def progress_bar(*extra: ProgressColumn) -> Progress:
    """A bar on stderr: description, bar, done/total, any ``extra`` columns, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
                    TimeRemainingColumn(), console=console, transient=False)


class RateColumn(ProgressColumn):
    """Items per second of this run (what a resume skipped does not count), e.g. ``12.3 labels/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress_hook(name: str, unit: str | None = None) -> Iterator[Callable[[int, int], Callable[[int], None]]]:
    """A ``progress`` argument for the library's long jobs: called with (total, done) when the work starts,
    it opens a bar (so nothing is drawn when the job ends early) and returns its advance callback.
    ``unit`` (e.g. ``"labels"``) adds a rate column, ``12.3 labels/s``, before the time left."""
    bars: list[Progress] = []

    def start(total: int, done: int) -> Callable[[int], None]:
        bars.append(progress_bar(*([RateColumn(unit)] if unit else [])))
        bars[-1].start()
        task = bars[-1].add_task(name, total=total, completed=done)
        return lambda n: bars[-1].advance(task, n)

    try:
        yield start
    finally:
        for bar in bars:
            bar.stop()


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence], out: Console | None = None) -> None:
    """A rich table on stdout (first column left-aligned, the rest right-aligned)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(str(c), justify="left" if c == columns[0] else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    (out or Console()).print(table)


class LoadNotices(logging.Handler):
    """The library's model-loading log (``selfie_adapters.models``) as console lines: "loading MODEL…"
    once a load has taken SLOW_LOAD_S, then "loaded MODEL in S s"; a GGUF being dequantised at once.
    A quick load prints nothing."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.timer: threading.Timer | None = None
        self.said = False

    def say(self, text: str) -> None:
        self.said = True
        console.print(text, highlight=False, soft_wrap=True)

    def emit(self, record: logging.LogRecord) -> None:
        stage = getattr(record, "load_stage", None)
        if stage == "start":
            self.said = False
            if math.isinf(SLOW_LOAD_S):  # notices off
                return
            self.timer = threading.Timer(SLOW_LOAD_S, self.say, [f"loading {record.model}…"])
            self.timer.daemon = True
            self.timer.start()
        elif stage == "note":
            self.say(record.getMessage() + " …")
        elif stage == "done":
            if self.timer is not None:
                self.timer.cancel()
            if self.said:
                self.say(f"loaded {record.model} in {record.seconds:.1f} s")


@contextmanager
def load_notices() -> Iterator[None]:
    """Show model loads that take long while a command runs (see ``LoadNotices``)."""
    logger = logging.getLogger("selfie_adapters.models")
    handler, level = LoadNotices(), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler.timer is not None:
            handler.timer.cancel()
        logger.removeHandler(handler)
        logger.setLevel(level)

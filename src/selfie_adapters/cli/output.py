"""What the CLI shows: the stderr console, progress bars and summary tables (the library never prints)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..evals.report import fmt

console = Console(stderr=True)


def progress_bar(*extra: TextColumn) -> Progress:
    """A bar on stderr: description, bar, done/total, any ``extra`` columns, time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra,
                    TimeRemainingColumn(), console=console, transient=False)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence], out: Console | None = None) -> None:
    """A rich table on stdout (first column left-aligned, the rest right-aligned)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(str(c), justify="left" if c == columns[0] else "right")
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    (out or Console()).print(table)

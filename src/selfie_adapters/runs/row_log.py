"""Append-only JSONL results that survive a kill, resume without duplicates and never mix runs.

Before any byte is touched: the output must be absent, empty, or ours (``OUT.settings.json``
names the command that wrote it, every row has that command's key fields) and computed from the
same inputs (see ``fingerprint``); only then is a torn last line (a kill mid-write) cut off.
The whole run holds ``OUT.lock``, so a second writer is refused instead of duplicating rows, and
the temp files a killed run left beside OUT (its settings record is written atomically) are removed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import suppress

from ..errors import SelfieError
from ..files import iter_jsonl, remove_stale_temps
from .fingerprint import resolve_settings
from .outputs import OutputLock, Record, check_output_path, check_same_inputs, refuse_foreign


class JsonlLog:
    """Rows are appended and fsynced batch by batch; use as a context manager (it holds the lock).

    >>> with JsonlLog("labels.jsonl", {"seed": 0}, command="describe", key_fields=("index",)) as log:
    ...     log.append([{"index": 0, "label": "fruit"}])
    """

    def __init__(self, path: str | os.PathLike, settings: dict | None = None, *, command: str = "results",
                 key_fields: Sequence[str] = (), overwrite: bool = False, about: dict | None = None) -> None:
        self.path = check_output_path(path)
        self.command, self.key_fields, self.about = command, tuple(key_fields), about
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = OutputLock(self.path).acquire()
        try:
            self.rows = self._open(settings or {}, overwrite)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, settings: dict, overwrite: bool) -> list[dict]:
        record = Record(self.path, self.command)
        remove_stale_temps(self.path.parent, names={self.path.name, record.path.name}, owned=True)  # OUT.lock is ours
        has_data = self.path.exists() and self.path.stat().st_size > 0
        if overwrite:
            self.path.unlink(missing_ok=True)
            record.remove()
            has_data = False
        stored = record.read() if has_data else None
        inputs = resolve_settings(settings, stored)
        rows: list[dict] = []
        if has_data:
            if stored is None:
                raise refuse_foreign(self.path, self.command, "exists and has no settings record of ours")
            check_same_inputs(self.path, stored, inputs)
            rows = self._read_rows()
        self._record, self._inputs = record, inputs  # the record is written with the first rows, so
        if has_data:                                 # a run that fails before them leaves nothing behind
            record.write(inputs, self.about)
            self._inputs = None
        return rows

    def _read_rows(self) -> list[dict]:
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
        try:
            lines = complete.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise refuse_foreign(self.path, self.command, f"is not UTF-8 text (byte {e.start})") from None
        hint = f"it is not a results file of `selfie {self.command}`; choose another output or pass --overwrite"
        rows = [row for _, row in iter_jsonl(lines, str(self.path), hint=hint)]
        for n, row in enumerate(rows, 1):
            missing = [k for k in self.key_fields if k not in row]
            if missing:
                raise refuse_foreign(self.path, self.command, f"row {n} lacks {', '.join(missing)}")
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:  # drop the torn tail of an interrupted write (ours, checked above)
                f.truncate(len(complete))
        return rows

    def done_keys(self, key: Callable[[dict], Hashable]) -> set:
        return {key(r) for r in self.rows}

    def append(self, rows: Iterable[dict]) -> None:
        """Append rows as strict JSON (NaN/inf refused); a failed write is rolled back to the last full row."""
        rows = list(rows)
        if not rows:
            return
        try:
            text = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
        except ValueError as e:
            raise SelfieError(f"a result row holds NaN/inf ({e}); nothing was written for this batch") from None
        if self._inputs is not None:
            self._record.write(self._inputs, self.about)
            self._inputs = None
        size = self.path.stat().st_size if self.path.exists() else 0
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            with suppress(OSError), open(self.path, "r+b") as f:  # e.g. disk full: no half row stays behind
                f.truncate(size)
            raise
        self.rows.extend(rows)

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> JsonlLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

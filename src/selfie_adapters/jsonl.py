"""Append-only JSONL results that survive a kill and resume without duplicates."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path

from .errors import SelfieError
from .files import iter_jsonl, write_text


class JsonlLog:
    """Rows are appended and fsynced batch by batch. On open, a torn last line (a kill mid-write) is
    cut off and every complete row is kept. ``settings`` are stored beside the file
    (``OUT.settings.json``); resuming with different settings is refused, so rows never mix runs.
    """

    def __init__(self, path: str | os.PathLike, settings: dict | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise SelfieError(f"output {self.path} is a folder; give a .jsonl file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = self._read_and_repair()
        self._check_settings(settings)

    @property
    def settings_path(self) -> Path:
        return self.path.with_name(self.path.name + ".settings.json")

    def _read_and_repair(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
        lines = complete.decode("utf-8", errors="replace").splitlines()
        hint = "it is not a results file of this tool. Choose another output path"
        rows = [row for _, row in iter_jsonl(lines, str(self.path), hint=hint)]
        if len(complete) != len(data):
            with open(self.path, "r+b") as f:  # drop the torn tail of an interrupted write
                f.truncate(len(complete))
        return rows

    def _check_settings(self, settings: dict | None) -> None:
        check_settings(self.settings_path, settings, bool(self.rows), self.path)

    def done_keys(self, key: Callable[[dict], Hashable]) -> set:
        return {key(r) for r in self.rows}

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        self.rows.extend(rows)


def check_settings(settings_path: Path, settings: dict | None, has_results: bool, what: Path) -> None:
    """Refuse to resume ``what`` with settings other than those it was started with; record them."""
    if settings is None:
        return
    settings = json.loads(json.dumps(settings))  # normalise tuples etc.
    if settings_path.exists() and has_results:
        old = json.loads(settings_path.read_text())
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            raise SelfieError(f"{what} was written with other settings ({', '.join(diff)} differ); "
                              "use another output file or delete it to start over")
    write_text(settings_path, json.dumps(settings, indent=1))

"""Outputs we own: only our own files are resumed or replaced, and one process writes each at a time.

``check_output_path`` refuses what must never be written through (a folder, a FIFO, a device, a
symbolic link, a name too long for the files we keep beside it) before any byte is touched.
``OutputLock`` is an OS lock (``fcntl.flock``) on ``OUT.lock``: a second writer gets an error
naming the holder's pid instead of interleaving rows. ``Record`` is the sidecar that proves a file
is ours and says which inputs its contents were computed from; ``check_settings`` is its form for a
folder of results (``eval bridge --out-dir``: ``settings.json`` holds the inputs themselves).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from pathlib import Path

from ..errors import SelfieError
from ..files import write_text
from .fingerprint import changed_keys, resolve_settings

NAME_MAX = 255
SUFFIX_ROOM = 40  # ".settings.json" plus the atomic writer's ".NAME.<pid>.<n>.tmp" decoration
RECORD_FORMAT = 2


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse a path that is not a regular file (or absent), or whose name leaves no room for sidecars."""
    path = Path(path)
    size = len(path.name.encode("utf-8", errors="surrogateescape"))
    if size + SUFFIX_ROOM > NAME_MAX:
        raise SelfieError(f"{what} name {path.name[:40]!r}... is {size} bytes; file names here can be at most "
                          f"{NAME_MAX - SUFFIX_ROOM} bytes (room is kept for the .settings.json/.lock files)")
    kind = _file_kind(path)
    if kind == "link":
        raise SelfieError(f"{what} {path} is a symbolic link; selfie does not write through links (the target "
                          "may not be ours). Give the real path of the file instead")
    if kind not in (None, "file"):
        raise SelfieError(f"{what} {path} is a {kind}, not a file; give a file path")
    parent_kind = _file_kind(path.parent) if str(path.parent) not in ("", ".") else "folder"
    if parent_kind not in (None, "folder", "link"):
        raise SelfieError(f"{what} {path}: {path.parent} is a {parent_kind}, not a folder")
    return path


def _file_kind(path: Path) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise SelfieError(f"{path}: a parent of this path is a file, not a folder") from None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"


class OutputLock:
    """Exclusive ``flock`` on ``OUT.lock`` for the life of a command; released (and removed) on exit.

    >>> with OutputLock("labels.jsonl"):
    ...     ...  # only this process writes labels.jsonl (and its sidecars) now
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        check_output_path(self.path, "lock file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise SelfieError(f"{self.target} is being written by another selfie process (pid {holder}); "
                                      "wait for it to finish or choose another output") from None
                raise
            if not _same_file(fd, self.path):  # unlinked by a releasing holder meanwhile: retry
                os.close(fd)
                continue
            self.fd = fd
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError:  # e.g. a full disk: leave no lock file and no open descriptor behind
                self.release()
                raise
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it, so no one locks a stale inode
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


class Record:
    """``OUT.settings.json``: which command wrote OUT and from which inputs (see ``fingerprint``)."""

    def __init__(self, target: str | os.PathLike, command: str, path: str | os.PathLike | None = None) -> None:
        self.target, self.command = Path(target), command
        self.path = Path(path) if path is not None else self.target.with_name(self.target.name + ".settings.json")

    def read(self) -> dict | None:
        """The recorded inputs, or None when there is no record of ours."""
        check_output_path(self.path, "settings record")
        data = read_record(self.path)
        if not isinstance(data, dict) or data.get("selfie") != self.command or not isinstance(data.get("inputs"),
                                                                                                dict):
            return None
        return data["inputs"]

    def write(self, inputs: dict, about: dict | None = None) -> None:
        """Record ``inputs`` (compared on resume) and ``about``: names for people and exports (the model and
        adapter as the user wrote them), never compared, since two names may mean the same content."""
        record = {"selfie": self.command, "format": RECORD_FORMAT, "inputs": inputs}
        if about:
            record["about"] = about
        write_text(self.path, json.dumps(record, indent=1, allow_nan=False))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def read_record(path: Path):
    """The JSON in a settings record, or None when it is absent or not JSON text."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def refuse_foreign(target: Path, command: str, why: str) -> SelfieError:
    return SelfieError(f"{target} {why}; it was not written by `selfie {command}` (or its record "
                       f"{target.name}.settings.json was removed). Choose another output, or pass --overwrite to "
                       "replace it")


def check_same_inputs(target: Path, old: dict, new: dict) -> None:
    """Refuse to add to ``target`` results computed from other inputs."""
    diff = changed_keys(old, new)
    if diff:
        raise SelfieError(f"{target} was computed from other inputs ({', '.join(diff)} changed); resuming would mix "
                          "results. Use the same inputs, choose another output, or pass --overwrite to start over")


def check_settings(settings_path: Path, settings: dict | None, has_results: bool, what: Path) -> None:
    """Refuse to resume ``what`` (a folder of results) with inputs other than those it was started with.
    ``FileInput`` values are compared by content (a file is re-hashed only when its size or mtime changed)."""
    if settings is None:
        return
    old = read_record(settings_path)
    if has_results and settings_path.exists() and not isinstance(old, dict):
        raise SelfieError(f"{settings_path} is not a settings record of selfie; choose another output folder")
    settings = resolve_settings(settings, old)
    if has_results and isinstance(old, dict):
        diff = changed_keys(old, settings)
        if diff:
            raise SelfieError(f"{what} was written with other settings ({', '.join(diff)} differ); "
                              "use another output folder or delete it to start over")
    write_text(settings_path, json.dumps(settings, indent=1))

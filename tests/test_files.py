"""files.py: atomic writes, JSONL reading, safetensors round trips, weights-only torch files."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pytest
import torch

from selfie_adapters.errors import SelfieError
from selfie_adapters.files import (
    atomic_path,
    read_jsonl,
    read_safetensors,
    remove_stale_temps,
    save_tensors,
    write_json,
    write_text,
)
from selfie_adapters.vectors.prompts import load_prompts


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temp file left behind


def test_stale_temp_files_of_dead_writers_are_swept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {f".a.txt.{dead}.0.tmp", f".b.txt.{dead}.3.tmp", f".a.txt.{alive.pid}.0.tmp",
                 f".a.txt.{os.getpid()}.7.tmp", "a.txt.123.0.tmp", ".notes.tmp"}
        for name in names:
            (tmp_path / name).write_text("x")
        write_text(tmp_path / "a.txt", "new")  # the next write of a.txt removes a.txt's dead temps only
        left = {p.name for p in tmp_path.iterdir()}
        assert left == names - {f".a.txt.{dead}.0.tmp"} | {"a.txt"}
        assert remove_stale_temps(tmp_path) == [tmp_path / f".b.txt.{dead}.3.tmp"]
        # the owner of the folder (holding its lock) treats every other process's temp as stale
        assert {p.name for p in remove_stale_temps(tmp_path, owned=True)} == {f".a.txt.{alive.pid}.0.tmp"}
        assert {p.name for p in tmp_path.iterdir()} == {"a.txt", f".a.txt.{os.getpid()}.7.tmp",
                                                        "a.txt.123.0.tmp", ".notes.tmp"}  # not temps of ours
    finally:
        alive.kill()
        alive.wait()


def test_write_json_creates_parents_and_nulls_nan(tmp_path):
    path = write_json(tmp_path / "deep" / "r.json", {"x": float("nan"), "y": [1.5]})
    assert path.read_text() == '{\n  "x": null,\n  "y": [\n    1.5\n  ]\n}\n'


def test_read_jsonl_reads_gzip_and_names_bad_line(tmp_path):
    good = tmp_path / "rows.jsonl.gz"
    with gzip.open(good, "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(good) == [{"a": 1}, {"a": 2}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(SelfieError, match=r"bad.jsonl:2: expected a JSON object, got list"):
        read_jsonl(bad)


def test_save_tensors_round_trip_with_metadata(tmp_path):
    t = {"w": torch.arange(6.0).view(2, 3).t()}  # non-contiguous input
    save_tensors(t, tmp_path / "t.safetensors", {"step": 3}, dtype=None)
    state, meta = read_safetensors(tmp_path / "t.safetensors")
    torch.testing.assert_close(state["w"], t["w"])
    assert meta == {"step": "3"}


def test_prompts_jsonl_without_prompt_field_names_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(SelfieError, match=r'p.jsonl:2: no "prompt" field'):
        load_prompts(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    """safetensors creates its file 0600 and tempfile.mkstemp too; what we write gets 0o666 & ~umask, as
    ``open(path, "w")`` would, and a replaced file keeps its mode."""
    import os
    import stat
    import tempfile

    old = os.umask(umask)
    try:
        st = save_tensors({"x": torch.ones(2)}, tmp_path / "v.safetensors")
        txt = write_text(tmp_path / "a.txt", "a")
        with atomic_path(tmp_path / "m.bin") as tmp:  # a writer that makes its own 0600 temp file
            fd, made = tempfile.mkstemp(dir=tmp_path)
            os.close(fd)
            os.replace(made, tmp)
        plain = tmp_path / "plain.txt"
        plain.write_text("p")
    finally:
        os.umask(old)
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~umask
    for path in (st, txt, tmp_path / "m.bin"):
        assert stat.S_IMODE(path.stat().st_mode) == want, path.name
    os.chmod(txt, 0o640)
    write_text(txt, "b")  # replacing a file keeps the mode it had
    assert stat.S_IMODE(txt.stat().st_mode) == 0o640

"""Fault injection: a second writer, a full disk, a read-only folder (kill -9: see test_kill_points.py).

After every fault the rerun must give exactly the uninterrupted result: nothing lost, nothing
duplicated, nothing foreign modified. The second writer is a real subprocess
(`python -m selfie_adapters.cli`); everything else runs in-process to keep the suite fast.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import selfie_adapters
from selfie_adapters.cli import main

SRC = str(Path(selfie_adapters.__file__).resolve().parents[1])
BATCH = 8  # describe: 24 rows in 3 batches (a full disk can land between them)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    save_file({"v": torch.randn(8, 64)}, str(d / "v.safetensors"))
    (d / "prompts.txt").write_text("".join(f"Tell me about topic number {i}.\n" for i in range(24)))
    return d, tiny_model_dir


def describe_args(world, out, *extra):
    d, model = world
    return ["describe", "--model", str(model), "--vectors", str(d / "v.safetensors"), "--scale", "1", "2", "3",
            "--max-new-tokens", "6", "--batch-size", str(BATCH), "--out", str(out), *extra]


def chunk_args(world, command, out):
    d, model = world
    return [command, "--model", str(model), "--layer", "1", "--layer", "2", "--prompts", str(d / "prompts.txt"),
            "--chunk", "3", "--batch-size", "3", "--out", str(out)]


def spawn(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same numerics
    return subprocess.Popen([sys.executable, "-m", "selfie_adapters.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def keyed(path: Path) -> dict:
    out = {}
    for r in rows(path):
        key = (r["index"], r["scale"], r["sample"])
        assert key not in out, f"duplicated row {key}"
        out[key] = r
    return out


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def run(capsys, argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    """Uninterrupted results of each command, computed in-process once."""
    ref = tmp_path_factory.mktemp("reference")
    assert main(describe_args(world, ref / "d.jsonl")) == 0
    assert main(chunk_args(world, "extract", ref / "e.safetensors")) == 0
    return ref


# ------------------------------------------------------------------ a second writer

@pytest.mark.slow
def test_second_writer_while_the_first_runs(world, reference, tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    lock = tmp_path / "d.jsonl.lock"
    first = spawn(describe_args(world, out))
    deadline = time.monotonic() + 240
    while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if first.poll() is None:  # the first holds the output: same settings or not, the second is refused
        code, err = run(capsys, describe_args(world, out, "--temperature", "1"))
        assert code == 2 and f"being written by another selfie process (pid {first.pid})" in err
        code, err = run(capsys, describe_args(world, out))
        assert code == 2 and "being written by another selfie process" in err
    assert first.wait() == 0, first.stderr.read().decode()
    assert keyed(out) == keyed(reference / "d.jsonl")  # no mixed or duplicated rows


# ------------------------------------------------------------------ disk faults

class _FullDisk:
    """A file object whose writes stop after ``room`` bytes with ENOSPC (the rest is lost)."""

    def __init__(self, f, room: list[int]):
        self.f, self.room = f, room

    def write(self, text: str) -> int:
        data = text[: self.room[0]]
        self.f.write(data)
        self.f.flush()
        self.room[0] -= len(data)
        if len(data) < len(text):
            raise OSError(errno.ENOSPC, "No space left on device", self.f.name)
        return len(text)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_full_disk_mid_row_then_resume(world, reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "d.jsonl"
    first = (reference / "d.jsonl").read_bytes().splitlines(keepends=True)
    room = [len(b"".join(first[:BATCH + 1])) + 20]  # the first batch fits, the disk fills in the 2nd
    monkeypatch.setattr("selfie_adapters.runs.row_log.open", lambda *a, **k: _FullDisk(open(*a, **k), room),  # noqa: SIM115
                        raising=False)
    code, err = run(capsys, describe_args(world, out))
    assert code == 2 and last_line(err).startswith("error: no space left on device: ") and "Traceback" not in err
    assert out.read_bytes().endswith(b"\n") and 0 < len(rows(out)) < 24  # only whole rows stay
    monkeypatch.undo()
    assert run(capsys, describe_args(world, out))[0] == 0
    assert keyed(out) == keyed(reference / "d.jsonl")


def test_full_disk_while_saving_a_chunk(world, reference, tmp_path, capsys, monkeypatch):
    from selfie_adapters import files

    out = tmp_path / "e.safetensors"
    real, calls = files.save_file, {"n": 0}

    def full_on_third(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(files, "save_file", full_on_third)
    code, err = run(capsys, chunk_args(world, "extract", out))
    assert code == 2 and "no space left on device" in err
    left = sorted(p.name for p in (tmp_path / "e.safetensors.parts").iterdir())
    assert left == ["000000.safetensors", "000001.safetensors", "settings.json"]  # no temp file left
    assert not out.exists()
    monkeypatch.undo()
    assert run(capsys, chunk_args(world, "extract", out))[0] == 0
    want = load_file(str(reference / "e.safetensors"))
    torch.testing.assert_close(load_file(str(out))["layer_1"], want["layer_1"], rtol=0, atol=0)


@pytest.mark.parametrize("err_no", [errno.EROFS, errno.EACCES, errno.ENAMETOOLONG])
def test_unwritable_output_folder(err_no, world, tmp_path, capsys, monkeypatch):
    import selfie_adapters.runs.outputs as outputs

    real = os.open

    def refused(path, flags, *a):
        if str(path).endswith(".lock"):
            raise OSError(err_no, os.strerror(err_no), str(path))
        return real(path, flags, *a)

    monkeypatch.setattr(outputs.os, "open", refused)
    for argv in (describe_args(world, tmp_path / "d.jsonl"), chunk_args(world, "mean", tmp_path / "m.safetensors")):
        code, err = run(capsys, argv)
        assert code == 2 and last_line(err).startswith(f"error: {os.strerror(err_no).lower()}: ")
        assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_real_read_only_and_full_tmpfs(world, reference, tmp_path, capsys):
    """The same faults on a real file system, where this machine lets us mount a tiny tmpfs."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount (covered by the patched tests above)")
    try:
        (mnt / "filler").write_bytes(b"\0" * (52 * 1024))  # 3 pages left: lock, record and ~20 rows fit
        code, err = run(capsys, describe_args(world, mnt / "d.jsonl"))
        assert code == 2 and "no space left on device" in err
        left = mnt / "d.jsonl"
        assert not left.exists() or left.read_bytes() == b"" or left.read_bytes().endswith(b"\n")
        assert not (mnt / "d.jsonl.lock").exists()
        (mnt / "filler").unlink()
        assert run(capsys, describe_args(world, mnt / "d.jsonl"))[0] == 0
        assert keyed(mnt / "d.jsonl") == keyed(reference / "d.jsonl")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        code, err = run(capsys, describe_args(world, mnt / "other.jsonl"))
        assert code == 2 and "read-only file system" in err
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)

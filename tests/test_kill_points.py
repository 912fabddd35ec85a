"""kill -9 at every stage of every resumable command, then a rerun: the folder ends as a clean run leaves it.

A stage is a file-system event of the command under its output folder: the lock taken, a rename of the
atomic writer (killed with the temp file written but not renamed, or just after), an append of rows
(killed with half of them written, or just after), a removal while cleaning up. A clean run lists its
events; then, for each event and each way of dying there, the command runs in a forked copy of this
process that SIGKILLs itself at that point (the loaded modules make a kill point cost one short run),
and the plain rerun must leave exactly the clean run's files, byte for byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from selfie_adapters.cli import main
from selfie_adapters.files import read_safetensors
from selfie_adapters.runs import row_log
from selfie_adapters.runs.outputs import OutputLock
from selfie_adapters.testing import toy_config_dict, toy_model, toy_tokenizer, write_toy_data

HOW = {"lock": ("after",), "rename": ("before", "after"), "append": ("half", "after"), "unlink": ("after",)}
TIMING = ("steps_per_s",)  # wall-clock numbers in train's metrics (and its rows of session timings) differ


class KillPoints:
    """Records the file-system events under ``root``; SIGKILLs this process at event ``at`` (``how``)."""

    def __init__(self, root: Path, at: int | None = None, how: str = "after") -> None:
        self.root, self.at, self.how = str(root), at, how
        self.events: list[tuple[str, str]] = []

    def hit(self, kind: str, path) -> bool:
        """Record an event; True when it is the one to die at."""
        self.events.append((kind, os.path.relpath(str(path), self.root)))
        return len(self.events) - 1 == self.at

    def mine(self, path) -> bool:
        return str(path).startswith(self.root + os.sep)

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_replace, real_unlink, real_acquire, points = os.replace, Path.unlink, OutputLock.acquire, self

        def replace(src, dst, *a, **k):
            hit = points.mine(dst) and points.hit("rename", dst)
            if hit and points.how == "before":
                die()
            real_replace(src, dst, *a, **k)
            if hit:
                die()

        def unlink(path, missing_ok=False):
            hit = points.mine(path) and path.exists() and points.hit("unlink", path)
            real_unlink(path, missing_ok=missing_ok)
            if hit:
                die()

        def acquire(lock):
            real_acquire(lock)
            if points.mine(lock.path) and points.hit("lock", lock.path):
                die()
            return lock

        def open_(file, mode="r", *a, **k):
            f = open(file, mode, *a, **k)  # noqa: SIM115 (handed back to the caller's `with`)
            return _Appends(f, points) if "a" in mode and points.mine(file) else f

        mp.setattr(os, "replace", replace)
        mp.setattr(Path, "unlink", unlink)
        mp.setattr(OutputLock, "acquire", acquire)
        mp.setattr(row_log, "open", open_, raising=False)


class _Appends:
    """A file opened for appending whose writes are events (``half``: die with half the text written)."""

    def __init__(self, f, points: KillPoints) -> None:
        self.f, self.points = f, points

    def write(self, text: str) -> int:
        hit = self.points.hit("append", self.f.name)
        if hit and self.points.how == "half":
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()
        n = self.f.write(text)
        if hit:
            self.f.flush()
            die()
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def killed_run(argv: list[str], root: Path, at: int, how: str) -> None:
    """Run the command in a forked child that SIGKILLs itself at event ``at``; fail if it never got there."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 97
        try:
            with pytest.MonkeyPatch.context() as mp:
                KillPoints(root, at, how).install(mp)
                code = main(argv)
        finally:
            os._exit(code if isinstance(code, int) else 98)
    deadline = time.monotonic() + 300
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # a hung child (one thread, no pool to inherit: it should not) fails
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the command hung before event {at} ({how})")
        time.sleep(0.01)
    status = done[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"the command never reached event {at} ({how}); exit status {os.waitstatus_to_exitcode(status)}"


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root``: relative path → bytes. Two exceptions: a safetensors header lists its
    metadata in hash order (differs between any two saves), so those files become sorted metadata plus
    raw tensor bytes; train's metrics lose their wall-clock numbers and the timing row each session
    (the killed one too, when it got that far) adds."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() or p.is_symlink():
            data = p.read_bytes()
            if p.suffix == ".safetensors":
                tensors, meta = read_safetensors(p)
                data = json.dumps(sorted(meta.items())).encode() + b"".join(
                    f"{k} {v.dtype} {tuple(v.shape)}".encode() + v.reshape(-1).view(torch.uint8).numpy().tobytes()
                    for k, v in sorted(tensors.items()))
            elif p.name == "metrics.jsonl":
                rows = [json.loads(x) for x in data.decode().splitlines()]
                data = json.dumps([{k: v for k, v in r.items() if k not in TIMING} for r in rows
                                   if "timing_s" not in r]).encode()
            out[str(p.relative_to(root))] = data
        elif p.is_dir() and not any(p.iterdir()):
            out[str(p.relative_to(root)) + "/"] = b""  # an empty folder left behind counts too
    return out


def stage(name: str) -> str:
    """The stage an event belongs to: its file name with numbers (chunk, step, pid) blanked out."""
    return re.sub(r"\d+", "#", name)


def every_kill_point(root: Path, argv: list[str], rerun) -> list[str]:
    """Clean run (listing its events), then kill at each event, rerun, and compare with the clean result;
    returns the kill points tried."""
    with pytest.MonkeyPatch.context() as mp:
        points = KillPoints(root)
        points.install(mp)
        assert main(argv) == 0
    clean = snapshot(root)
    assert clean and not any(".tmp" in name or name.endswith(".lock") for name in clean)
    shutil.rmtree(root)
    tried = []
    for at, (kind, name) in enumerate(points.events):
        if (kind, stage(name)) in [(k, stage(n)) for k, n in points.events[:at]] and \
                (kind, stage(name)) in [(k, stage(n)) for k, n in points.events[at + 1:]]:
            continue  # the middle one of a repeated stage (chunk 2 of 3, batch 2 of 3, ...) dies as the first
        for how in HOW[kind]:
            root.mkdir()
            killed_run(argv, root, at, how)
            assert rerun(root) == 0, f"rerun after a kill at {kind} {name} ({how}) failed"
            got = snapshot(root)
            assert sorted(got) == sorted(clean), f"kill at {kind} {name} ({how}): files differ"
            bad = [n for n in clean if got[n] != clean[n]]
            assert not bad, f"kill at {kind} {name} ({how}): contents differ in {bad}"
            shutil.rmtree(root)
            tried.append(f"{kind} {stage(name)} ({how})")
    return tried


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("kill-points")
    torch.manual_seed(0)
    save_file({"v": torch.randn(8, 64)}, str(d / "v.safetensors"))
    (d / "prompts.txt").write_text("".join(f"Tell me about topic number {i}.\n" for i in range(12)))
    return d, tiny_model_dir


@pytest.fixture
def fork_ready(monkeypatch):
    """One torch thread in parent and children (a forked child cannot use the parent's OpenMP pool, and
    the killed child and the rerun must compute the same bits); each model loads once (the real Llama-3
    tokenizer takes most of a tiny run), so a kill point costs little beyond its file events."""
    import selfie_adapters.models.loading as loading

    before, real, cache = torch.get_num_threads(), loading.load_model, {}

    def load_once(name, **kw):
        key = (str(name), repr(sorted(kw.items())))
        if key not in cache:
            cache[key] = real(name, **kw)
        return cache[key]

    for module in ("models.loading", "interpret.resumable", "vectors.chunked", "training.trainer"):
        monkeypatch.setattr(f"selfie_adapters.{module}.load_model", load_once, raising=False)
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", ["describe", "extract", "mean"])
def test_every_kill_point_then_rerun(command, world, tmp_path, fork_ready):
    d, model = world
    root = tmp_path / "w"
    if command == "describe":  # 8 vectors × 2 scales in 3 batches
        argv = ["describe", "--model", str(model), "--vectors", str(d / "v.safetensors"), "--scale", "1", "2",
                "--max-new-tokens", "4", "--batch-size", "6", "--out", str(root / "d.jsonl")]
    else:  # 12 prompts in 3 chunks
        argv = [command, "--model", str(model), "--layer", "1", "--prompts", str(d / "prompts.txt"),
                "--chunk", "4", "--batch-size", "4", "--out", str(root / "o.safetensors")]
    tried = every_kill_point(root, argv, lambda _: main(argv))
    if command == "describe":
        assert {"rename d.jsonl.settings.json (before)", "append d.jsonl (half)", "unlink d.jsonl.lock (after)"} \
            <= set(tried) and len(tried) == 8
    else:  # lock, the record, first and last chunk, OUT, first and last chunk removed, the record removed, unlock
        assert {"rename o.safetensors.parts/#.safetensors (before)", "rename o.safetensors (after)",
                "unlink o.safetensors.parts/settings.json (after)"} <= set(tried) and len(tried) == 13


@pytest.mark.slow
def test_every_kill_point_of_training_then_resume(tmp_path, fork_ready):
    data = tmp_path / "toy"
    write_toy_data(data)
    tok = toy_tokenizer()
    toy_model(tok, name=str(data / "model")).save_pretrained(data / "model")
    tok.save_pretrained(data / "model")
    root = tmp_path / "w"
    raw = toy_config_dict(data, checkpoint_dir=str(root / "run"), max_steps=6, checkpoint_every_n_steps=2,
                          validation_every_n_steps=3)
    raw["model"]["name"] = str(data / "model")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = ["train", str(config), "--no-progress"]

    def rerun(root: Path) -> int:  # resume when a state was saved, else start over explicitly
        started = (root / "run" / "toy" / "training_state.safetensors").exists()
        return main([*argv, "--resume" if started else "--overwrite"])

    tried = every_kill_point(root, argv, rerun)
    assert {"rename run/toy/training_state.safetensors (before)", "rename run/toy/best.safetensors (after)",
            "rename run/toy/final.safetensors (before)"} <= set(tried)

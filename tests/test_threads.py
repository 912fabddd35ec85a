"""torch's thread count: --threads, then OMP_NUM_THREADS, then the usable CPUs that other processes leave idle."""

from __future__ import annotations

import pytest
import torch
import typer

from selfie_adapters import threads
from selfie_adapters.cli import app, main

MODEL_COMMANDS = [["describe"], ["extract"], ["mean"], ["train"], ["demo"], ["serve"], ["eval", "loss"],
                  ["eval", "generation"], ["eval", "bridge"], ["eval", "retrieval"], ["experiment", "topics"]]


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: ``set(cpus=, load=, quota=)``; OMP_NUM_THREADS unset; torch's count restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "CGROUP_V2", tmp_path / "cpu.max")
    monkeypatch.setattr(threads, "CGROUP_V1", (tmp_path / "quota", tmp_path / "period"))
    before = torch.get_num_threads()

    def set_(cpus: int = 8, load: float = 0.0, quota: str | None = None, runnable: int = 99) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cpus)))
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
        (tmp_path / "loadavg").write_text(f"{load:.2f} {load:.2f} {load:.2f} {runnable}/300 4242\n")
        monkeypatch.setattr(threads, "LOADAVG", tmp_path / "loadavg")
        if quota is not None:
            (tmp_path / "cpu.max").write_text(quota + "\n")

    yield set_
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cpus", "load", "quota", "want"), [
    (8, 0.0, None, 8),               # idle: every CPU of the affinity mask
    (2, 0.1, None, 2),
    (2, 2.0, None, 1),               # a 2-thread job beside us on 2 CPUs: one thread, never zero
    (2, 14.0, None, 1),
    (16, 5.4, None, 11),             # 5 CPUs busy (rounded)
    (8, 0.0, "200000 100000", 2),    # cgroup v2 quota of 2 CPUs caps the affinity mask
    (8, 0.0, "150000 100000", 1),    # 1.5 CPUs of time: one thread that is never throttled
    (8, 0.0, "max 100000", 8),       # no quota
])
def test_default_threads_follow_affinity_quota_and_load(machine, cpus, load, quota, want):
    machine(cpus=cpus, load=load, quota=quota)
    assert threads.default_threads() == want
    assert threads.choose_threads(None) == (want, f"{min(cpus, threads.usable_cpus())} usable CPU(s), load "
                                                  f"{load:.1f}")


def test_a_job_that_just_ended_does_not_count(machine):
    machine(cpus=2, load=2.0, runnable=1)  # the load average still remembers it; nothing else runs now
    assert threads.busy_cpus() == 0 and threads.default_threads() == 2
    machine(cpus=2, load=2.0, runnable=3)  # two others runnable beside this process: one thread
    assert threads.busy_cpus() == 2.0 and threads.default_threads() == 1


def test_cgroup_v1_quota(machine, tmp_path):
    machine(cpus=8)
    (tmp_path / "quota").write_text("300000\n")
    (tmp_path / "period").write_text("100000\n")
    assert threads.cgroup_cpu_quota() == 3.0 and threads.usable_cpus() == 3
    (tmp_path / "quota").write_text("-1\n")
    assert threads.cgroup_cpu_quota() is None


def test_requested_beats_omp_num_threads_beats_the_default(machine, monkeypatch):
    machine(cpus=8, load=7.0)
    assert threads.configure_threads(None) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(None) == (3, "OMP_NUM_THREADS")
    assert threads.configure_threads(None) == 3 and torch.get_num_threads() == 3
    assert threads.configure_threads(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's per-level list: the first level is ours
    assert threads.env_threads() == 4
    for junk in ("", "0", "many", "-2"):
        monkeypatch.setenv("OMP_NUM_THREADS", junk)
        assert threads.env_threads() is None
    with pytest.raises(threads.SelfieError, match="--threads must be at least 1, got 0"):
        threads.choose_threads(0)


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_takes_threads(command):
    group = typer.main.get_command(app)
    cmd = group
    for name in command:
        cmd = cmd.commands[name]
    opt = next((p for p in cmd.params if p.name == "threads"), None)
    assert opt is not None and opt.opts == ["--threads"] and opt.default is None


def test_threads_option_sets_torch_threads(machine, tmp_path, tiny_model_dir, capsys):
    machine(cpus=8, load=0.0)
    (tmp_path / "p.txt").write_text("Tell me about cats.\n")
    argv = ["mean", "--model", str(tiny_model_dir), "--layer", "1", "--prompts", str(tmp_path / "p.txt"),
            "--out", str(tmp_path / "m.safetensors")]
    assert main([*argv, "--threads", "1"]) == 0 and torch.get_num_threads() == 1
    assert main([*argv, "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err

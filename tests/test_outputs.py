"""Outputs are owned, inputs are fingerprinted: nothing foreign touched, nothing mixed, one writer."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters.cli import main
from selfie_adapters.errors import SelfieError
from selfie_adapters.runs.fingerprint import file_fingerprint, model_identity
from selfie_adapters.runs.outputs import OutputLock, check_output_path


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    save_file({"a": torch.randn(2, 64), "b": torch.randn(2, 64)}, str(d / "ab.safetensors"))
    (d / "prompts.txt").write_text("Tell me about Paris.\nHi\n")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


def describe(d, model, out, *extra):
    return ("describe", "--model", model, "--vectors", d / "ab.safetensors", "--key", "a", "--scale", 2,
            "--max-new-tokens", 2, "--out", out, *extra)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------ foreign things at --out

FOREIGN = '{"id":"a"}\n{"id":"b"}'


@pytest.mark.parametrize("command", ["describe", "extract", "mean"])
def test_foreign_file_at_out_is_never_touched(command, d, tiny_model_dir, tmp_path, capsys):
    victim = tmp_path / ("victim.jsonl" if command == "describe" else "victim.safetensors")
    victim.write_text(FOREIGN)
    args = describe(d, tiny_model_dir, victim) if command == "describe" else (
        command, "--model", tiny_model_dir, "--layer", 1, "--prompts", d / "prompts.txt", "--out", victim)
    code, err = run(capsys, *args)
    assert code == 2 and "not written by `selfie" in err and "--overwrite" in err
    assert snapshot(tmp_path) == {victim.name: FOREIGN.encode()}  # no sidecar, no lock, no parts


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
def test_folder_fifo_and_symlink_at_out_are_refused(kind, d, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    target = tmp_path / "target.jsonl"
    target.write_text(FOREIGN)
    if kind == "folder":
        out.mkdir()
    elif kind == "fifo":
        os.mkfifo(out)  # opening it for writing would block forever
    else:
        out.symlink_to(target)
    before = snapshot(tmp_path)
    code, err = run(capsys, *describe(d, tiny_model_dir, out))
    assert code == 2 and {"folder": "is a folder", "fifo": "is a FIFO", "symlink": "symbolic link"}[kind] in err
    assert snapshot(tmp_path) == before
    code, err = run(capsys, "extract", "--model", tiny_model_dir, "--layer", 1, "--prompts", d / "prompts.txt",
                    "--out", out)
    assert code == 2 and snapshot(tmp_path) == before


def test_retrieval_out_folder_refused_before_work(tmp_path, capsys):
    (tmp_path / "r.json").mkdir()
    code, err = run(capsys, "eval", "retrieval", "--labels", tmp_path / "none.jsonl", "--topics",
                    tmp_path / "none.jsonl", "--out", tmp_path / "r.json")
    assert code == 2 and "is a folder" in err


def test_name_too_long_for_the_sidecars(d, tiny_model_dir, tmp_path, capsys):
    code, err = run(capsys, *describe(d, tiny_model_dir, tmp_path / ("x" * 230 + ".jsonl")))
    assert code == 2 and "file names here can be at most" in err and not list(tmp_path.iterdir())


# ------------------------------------------------------------------ one writer at a time

def test_second_writer_is_refused(d, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    with OutputLock(out):
        code, err = run(capsys, *describe(d, tiny_model_dir, out))
        assert code == 2 and f"being written by another selfie process (pid {os.getpid()})" in err
        code, err = run(capsys, "mean", "--model", tiny_model_dir, "--layer", 1, "--prompts", d / "prompts.txt",
                        "--out", out)
        assert code == 2 and "being written by another" in err
    assert not out.exists() and not (tmp_path / "o.jsonl.lock").exists()
    assert run(capsys, *describe(d, tiny_model_dir, out))[0] == 0  # free again
    assert not (tmp_path / "o.jsonl.lock").exists()


def test_lock_is_released_and_relockable(tmp_path):
    lock = OutputLock(tmp_path / "x").acquire()
    with pytest.raises(SelfieError, match="being written"):
        OutputLock(tmp_path / "x").acquire()
    lock.release()
    with OutputLock(tmp_path / "x"):
        assert (tmp_path / "x.lock").read_text() == str(os.getpid())


# ------------------------------------------------------------------ resume compares content, not paths

def test_changed_key_and_replaced_file_are_refused(d, tiny_model_dir, tmp_path, capsys):
    vecs = tmp_path / "v.safetensors"
    shutil.copy(d / "ab.safetensors", vecs)
    out = tmp_path / "o.jsonl"
    base = ("describe", "--model", tiny_model_dir, "--vectors", vecs, "--scale", 2, "--max-new-tokens", 2,
            "--out", out)
    assert run(capsys, *base, "--key", "a")[0] == 0
    rows = out.read_bytes()
    code, err = run(capsys, *base, "--key", "b")
    assert code == 2 and "(key changed)" in err and out.read_bytes() == rows
    save_file({"a": torch.randn(2, 64), "b": torch.randn(2, 64)}, str(vecs))  # replaced at the same path
    code, err = run(capsys, *base, "--key", "a")
    assert code == 2 and "(vectors changed)" in err and out.read_bytes() == rows
    assert run(capsys, *base, "--key", "a", "--overwrite")[0] == 0
    assert out.read_bytes() != rows and len(out.read_text().splitlines()) == 2


def test_same_file_by_another_path_resumes(d, tiny_model_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.jsonl"
    assert run(capsys, *describe(d, tiny_model_dir, out))[0] == 0
    rows = out.read_text()
    (d / "ab.safetensors").touch()  # a new mtime alone is no change: the hash decides
    monkeypatch.chdir(tmp_path)
    other = os.path.relpath(d / "ab.safetensors")
    code, _ = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", other, "--key", "a", "--scale", 2,
                  "--max-new-tokens", 2, "--out", "o.jsonl")
    assert code == 0 and out.read_text() == rows


def test_missing_record_next_to_rows_needs_overwrite(d, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert run(capsys, *describe(d, tiny_model_dir, out))[0] == 0
    (tmp_path / "o.jsonl.settings.json").unlink()
    rows = out.read_bytes()
    code, err = run(capsys, *describe(d, tiny_model_dir, out, "--temperature", 1))
    assert code == 2 and "--overwrite" in err and out.read_bytes() == rows
    assert run(capsys, *describe(d, tiny_model_dir, out, "--overwrite"))[0] == 0
    assert out.read_bytes() == rows and (tmp_path / "o.jsonl.settings.json").exists()


def test_rows_of_another_command_are_refused(d, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    assert run(capsys, *describe(d, tiny_model_dir, out))[0] == 0
    with out.open("a") as f:
        f.write('{"id": "b"}\n')
    before = snapshot(tmp_path)
    code, err = run(capsys, *describe(d, tiny_model_dir, out))
    assert code == 2 and "row 3 lacks index, scale, sample" in err and snapshot(tmp_path) == before


def test_extract_dtype_change_after_kill_is_refused(d, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    args = ("extract", "--model", tiny_model_dir, "--layer", 1, "--prompts", d / "prompts.txt", "--chunk", 1,
            "--out", out)
    from selfie_adapters.runs.chunk_store import ChunkStore

    real_run = ChunkStore.run

    def killed(self, total, chunk, compute, progress=None):  # dies after the first chunk is on disk
        compute_once = {"n": 0}

        def first_only(a, b):
            compute_once["n"] += 1
            if compute_once["n"] > 1:
                raise KeyboardInterrupt
            return compute(a, b)
        return real_run(self, total, chunk, first_only, progress)

    ChunkStore.run = killed
    try:
        assert run(capsys, *args, "--dtype", "bfloat16")[0] == 130
    finally:
        ChunkStore.run = real_run
    assert [p.name for p in sorted((tmp_path / "v.safetensors.parts").iterdir())] == ["000000.safetensors",
                                                                                    "settings.json"]
    code, err = run(capsys, *args, "--dtype", "float32")
    assert code == 2 and "(dtype changed)" in err
    assert run(capsys, *args, "--dtype", "bfloat16")[0] == 0 and not (tmp_path / "v.safetensors.parts").exists()
    done = out.read_bytes()
    code, err = run(capsys, *args, "--dtype", "bfloat16")
    assert code == 0 and "already complete" in err and out.read_bytes() == done
    code, err = run(capsys, *args, "--dtype", "float32")
    assert code == 2 and "(dtype changed)" in err and out.read_bytes() == done
    assert run(capsys, *args, "--dtype", "float32", "--overwrite")[0] == 0 and out.read_bytes() != done


# ------------------------------------------------------------------ numbers

def test_scales_checked_and_deduplicated(d, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    for bad in ("nan", "inf", "-inf", "0", "-1"):
        code, err = run(capsys, *describe(d, tiny_model_dir, out, "--scale", bad))
        assert code == 2 and "--scale must be" in err and not out.exists(), bad
    assert run(capsys, *describe(d, tiny_model_dir, out, "--scale", 1, 1, "1.0"))[0] == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted((r["index"], r["scale"]) for r in rows) == [(0, 1.0), (0, 2.0), (1, 1.0), (1, 2.0)]


def test_zero_vectors_skipped_with_a_warning_and_huge_ones_described(tiny_model_dir, tmp_path, capsys):
    v = torch.randn(3, 64)
    v[1] = 0
    v[2] = v[0] * 1e30  # ‖x‖² overflows fp32; x/max|x| first keeps it finite
    np.save(tmp_path / "v.npy", v.numpy())
    out = tmp_path / "o.jsonl"
    with pytest.warns(UserWarning, match=r"skipping 1 zero vector\(s\).*\[1\]"):
        code, _ = run(capsys, "describe", "--model", tiny_model_dir, "--vectors", tmp_path / "v.npy", "--scale", 3,
                      "--max-new-tokens", 3, "--out", out)
    rows = {r["index"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert code == 0 and sorted(rows) == [0, 2]
    assert rows[2]["text"] == rows[0]["text"]  # same direction → same (greedy) description


def test_l2_normalize_is_overflow_safe():
    from selfie_adapters.adapters.kinds import l2_normalize

    x = torch.tensor([[3e30, 4e30], [0.0, 0.0], [3e-30, 4e-30]])
    torch.testing.assert_close(l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]]))


def test_rows_are_strict_json(tmp_path):
    from selfie_adapters.runs.row_log import JsonlLog

    with JsonlLog(tmp_path / "o.jsonl", {"a": 1}, command="t") as log, pytest.raises(SelfieError, match="NaN"):
        log.append([{"x": float("nan")}])
    assert not (tmp_path / "o.jsonl").exists()


# ------------------------------------------------------------------ fingerprints

def test_fingerprints_follow_content(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc")
    fp = file_fingerprint(f)
    assert file_fingerprint(f, fp) == fp
    f.write_bytes(b"abd")
    os.utime(f, ns=(fp["mtime_ns"], fp["mtime_ns"]))  # same size and mtime: the stored hash is trusted
    assert file_fingerprint(f, fp)["sha256"] == fp["sha256"]
    f.write_bytes(b"abcd")
    assert file_fingerprint(f, fp)["sha256"] != fp["sha256"]
    assert model_identity("org/model") == {"hub_id": "org/model"}


def test_check_output_path_kinds(tmp_path):
    assert check_output_path(tmp_path / "new.jsonl") == tmp_path / "new.jsonl"
    (tmp_path / "file").write_text("x")
    with pytest.raises(SelfieError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out.jsonl")


def test_bridge_out_dir_must_be_a_free_folder(tiny_model_dir, tmp_path, capsys):
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "q1", "question": "Who sang Thriller?", "e2_value": "Michael Jackson"}))
    args = ["eval", "bridge", "--model", tiny_model_dir, "--records", records, "--layers", "0", "--samples", 1,
            "--max-new-tokens", 2, "--no-chat", "--out-dir"]
    (tmp_path / "file").write_text("mine")
    code, err = run(capsys, *args, tmp_path / "file")
    assert code == 2 and "is not a folder" in err and (tmp_path / "file").read_text() == "mine"
    with OutputLock(tmp_path / "b"):
        code, err = run(capsys, *args, tmp_path / "b")
        assert code == 2 and "being written by another selfie process" in err
    assert not (tmp_path / "b").exists()

"""Every bad value from issue 12 → exit 2, one `error:` line naming the problem, nothing written.

Each case runs the CLI in-process; the output folder must be empty afterwards (no rows, records,
locks or chunk folders), and no case may print a traceback.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from selfie_adapters import Adapter, build_projection
from selfie_adapters.cli import main
from selfie_adapters.testing import toy_config_dict, write_toy_data


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    save_file({"v": torch.randn(2, 64)}, str(d / "v.safetensors"))
    save_file({"v": torch.zeros(0, 64)}, str(d / "empty_rows.safetensors"))
    np.save(d / "v.npy", torch.randn(2, 64).numpy())
    (d / "zero_bytes.npy").write_bytes(b"")
    (d / "zero_bytes.pt").write_bytes(b"")
    torch.save(torch.zeros(0, 64), d / "empty.pt")
    (d / "prompts.txt").write_text("Hi\n")
    (d / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (d / "null.jsonl").write_text('{"prompt": null}\n')
    (d / "number.jsonl").write_text('{"prompt": 5}\n')
    good = Adapter(build_projection("scalar_affine_plus_low_rank", 64, rank=2), {"model_name": str(tiny_model_dir)})
    good.save(d / "good.safetensors")
    from selfie_adapters.files import read_safetensors

    state, meta = read_safetensors(d / "good.safetensors")
    for name, key, value in (("init", "init_scale", "abc"), ("rank", "low_rank_rank", "abc"),
                             ("cfg", "config_json", '{"projection": 5}'), ("inf", "init_scale", "inf"),
                             ("norm", "normalize_input", "maybe")):
        save_file(state, str(d / f"meta_{name}.safetensors"), metadata={**meta, key: value})
    write_toy_data(d / "toy")
    return d


def describe(d, model, *extra, vectors="v.safetensors"):
    return ["describe", "--model", model, "--vectors", d / vectors, "--max-new-tokens", 2, *extra]


CASES = {  # id: (argv builder, message fragment)
    "batch-size 0": (lambda d, m: describe(d, m, "--batch-size", 0), "--batch-size"),
    "max-new-tokens 0": (lambda d, m: describe(d, m, "--max-new-tokens", 0), "--max-new-tokens"),
    "temperature -1": (lambda d, m: describe(d, m, "--temperature", -1), "--temperature"),
    "temperature nan": (lambda d, m: describe(d, m, "--temperature", "nan"), "--temperature"),
    "top-p 1.5": (lambda d, m: describe(d, m, "--top-p", 1.5), "--top-p"),
    "top-p 0": (lambda d, m: describe(d, m, "--top-p", 0), "--top-p must be > 0"),
    "samples 0": (lambda d, m: describe(d, m, "--samples", 0), "--samples"),
    "scale nan": (lambda d, m: describe(d, m, "--scale", "nan"), "--scale must be a finite"),
    "scale inf": (lambda d, m: describe(d, m, "--scale", "inf"), "--scale must be a finite"),
    "scale 0": (lambda d, m: describe(d, m, "--scale", 0), "--scale must be > 0"),
    "scale -2": (lambda d, m: describe(d, m, "--scale", -2), "--scale must be > 0"),
    "device cuda": (lambda d, m: describe(d, m, "--device", "cuda"), "no CUDA GPU"),
    "device cuda:7": (lambda d, m: describe(d, m, "--device", "cuda:7"), "CUDA"),
    "device foo": (lambda d, m: describe(d, m, "--device", "foo"), "is not a device"),
    "dtype foo": (lambda d, m: describe(d, m, "--dtype", "foo"), "--dtype"),
    "empty .npy": (lambda d, m: describe(d, m, vectors="zero_bytes.npy"), "not a plain numeric .npy"),
    "empty .pt": (lambda d, m: describe(d, m, vectors="zero_bytes.pt"), "not a readable torch file"),
    "(0, d) .pt": (lambda d, m: describe(d, m, vectors="empty.pt"), "non-empty"),
    "(0, d) safetensors": (lambda d, m: describe(d, m, vectors="empty_rows.safetensors"), "non-empty"),
    "--key with .npy": (lambda d, m: describe(d, m, "--key", "v", vectors="v.npy"), "does not apply"),
    "prompts latin-1": (lambda d, m: ["describe", "--model", m, "--prompts", d / "latin1.txt", "--layer", 1],
                        "not valid UTF-8"),
    "prompt null": (lambda d, m: ["describe", "--model", m, "--prompts", d / "null.jsonl", "--layer", 1],
                    '"prompt" field is not a string'),
    "prompt number": (lambda d, m: ["extract", "--model", m, "--prompts", d / "number.jsonl", "--layer", 1],
                      '"prompt" field is not a string'),
    "adapter init_scale=abc": (lambda d, m: describe(d, m, "--adapter", d / "meta_init.safetensors"),
                               "init_scale must be a number"),
    "adapter init_scale=inf": (lambda d, m: describe(d, m, "--adapter", d / "meta_inf.safetensors"),
                               "init_scale must be a number"),
    "adapter low_rank_rank=abc": (lambda d, m: describe(d, m, "--adapter", d / "meta_rank.safetensors"),
                                  "low_rank_rank must be an integer"),
    "adapter config_json projection 5": (lambda d, m: describe(d, m, "--adapter", d / "meta_cfg.safetensors"),
                                         "'projection' must be a mapping"),
    "adapter normalize_input=maybe": (lambda d, m: describe(d, m, "--adapter", d / "meta_norm.safetensors"),
                                      "normalize_input"),
    "inspect bad metadata": (lambda d, m: ["inspect", d / "meta_rank.safetensors"], "low_rank_rank"),
    "extract batch 0": (lambda d, m: ["extract", "--model", m, "--prompts", d / "prompts.txt", "--layer", 1,
                                      "--batch-size", 0], "--batch-size"),
    "extract chunk 0": (lambda d, m: ["extract", "--model", m, "--prompts", d / "prompts.txt", "--layer", 1,
                                      "--chunk", 0], "--chunk"),
    "extract no layer": (lambda d, m: ["extract", "--model", m, "--prompts", d / "prompts.txt"], "--layer"),
    "extract layer 99": (lambda d, m: ["extract", "--model", m, "--prompts", d / "prompts.txt", "--layer", 99],
                         "out of range"),
    "mean device cuda": (lambda d, m: ["mean", "--model", m, "--prompts", d / "prompts.txt", "--layer", 1,
                                       "--device", "cuda"], "no CUDA GPU"),
    "eval loss batch 0": (lambda d, m: ["eval", "loss", "--model", m, "--labels", d / "toy" / "labels.json",
                                        "--scale", 1, "--batch-size", 0], "--batch-size"),
    "eval loss scale nan": (lambda d, m: ["eval", "loss", "--model", m, "--labels", d / "toy" / "labels.json",
                                          "--scale", "nan"], "--scale must be a finite"),
    "eval generation top-p": (lambda d, m: ["eval", "generation", "--model", m, "--labels", d / "null.jsonl",
                                            "--top-p", 1.5], "--top-p"),
    "eval generation temperature": (lambda d, m: ["eval", "generation", "--model", m, "--labels",
                                                  d / "null.jsonl", "--temperature", "-inf"], "--temperature"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_cli_value(case, d, tiny_model_dir, tmp_path, capsys, monkeypatch):
    if case.startswith(("device cuda", "mean device cuda")) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    build, message = CASES[case]
    argv = [str(a) for a in build(d, tiny_model_dir)]
    if argv[0] in ("describe", "extract", "mean") or argv[:2] == ["eval", "generation"]:
        argv += ["--out", str(tmp_path / ("o.jsonl" if argv[0] != "extract" else "o.safetensors"))]
    _forbid_model_loading(monkeypatch, case)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


LATE = ("extract layer 99", "prompt null")  # checked against the model (layer count) or after tokenising


def _forbid_model_loading(monkeypatch, case):
    """Fail the case if model weights are read before its bad value was refused.

    The guard sits where every loader ends up (transformers' ``from_pretrained``), not on one of our
    names, so it fires however a command reaches the model.
    """
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def guarded(*a, **k):
        if case not in LATE:
            raise AssertionError(f"{case}: the model was loaded before the bad value was refused")
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", guarded)


def test_the_model_loading_guard_fires(tiny_model_dir, monkeypatch):
    """The guard above is live: loading the model under it fails for a case that must not load."""
    from selfie_adapters import load_model

    _forbid_model_loading(monkeypatch, "batch-size 0")
    with pytest.raises(AssertionError, match="loaded before the bad value was refused"):
        load_model(str(tiny_model_dir))


BAD_YAML = {
    "learning_rate: [1, 2]": ("training:\n  learning_rate: [1, 2]\n", "training.learning_rate must be a number"),
    "learning_rate: .inf": ("training:\n  learning_rate: .inf\n", "finite"),
    "seed: abc": ("seed: abc\n", "seed must be an integer"),
    "normalize_input: maybe": ("projection:\n  normalize_input: maybe\n", "true or false"),
    "experiment_name escape": ("experiment_name: ../../escape\n", "plain folder name"),
    "batch_size: -1": ("data:\n  batch_size: -1\n", "data.batch_size must be >= 1"),
    "not a mapping": ("- a\n- b\n", "must hold a mapping"),
    "bad yaml": ("training: [\n", "not valid YAML"),
    "latin-1 yaml": (b"experiment_name: caf\xe9\n", "UTF-8"),
}


@pytest.mark.parametrize("case", list(BAD_YAML))
def test_bad_training_config(case, d, tmp_path, capsys):
    text, message = BAD_YAML[case]
    cfg = tmp_path / "c.yaml"
    (cfg.write_bytes if isinstance(text, bytes) else cfg.write_text)(text)
    code = main(["train", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_train_checkpoint_dir_is_a_file(d, tmp_path, capsys):
    raw = toy_config_dict(d / "toy", checkpoint_dir=str(tmp_path / "file"))
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_set_override_values_are_checked(d, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(json.dumps(toy_config_dict(d / "toy", checkpoint_dir=str(tmp_path / "ck"))))
    assert main(["train", str(tmp_path / "c.yaml"), "--set", "training.learning_rate=.inf"]) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "c.yaml"), "--set", "seed=abc"]) == 2
    assert "seed must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()

"""`selfie train` / `selfie eval loss` in-process, and 2-process DDP (gloo) = 1 process."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from selfie_adapters import load_adapter
from selfie_adapters.cli import main
from selfie_adapters.testing import toy_config, toy_config_dict, toy_model, toy_tokenizer, write_toy_data
from selfie_adapters.training.trainer import train


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("toycli")
    write_toy_data(root)
    tok = toy_tokenizer()
    model = toy_model(tok, name=str(root / "model"))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root


def test_train_and_eval_loss_commands(toy_dir, tmp_path, capsys):
    raw = toy_config_dict(toy_dir, checkpoint_dir=str(tmp_path))
    raw["model"]["name"] = str(toy_dir / "model")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    code = main(["train", str(tmp_path / "c.yaml"), "--set", "training.max_steps=4", "--set",
                 "training.val_fraction=0.5", "--set", "data.batch_size=4"])
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "train" in err and "4/4" in err  # the CLI's progress bar (the trainer only reports)
    final = tmp_path / "toy" / "final.safetensors"
    assert f"final: {final}" in out and "best:" in out
    assert "time: load " in out and "forward" in out and "steps/s in the steps" in out  # the stage breakdown
    metrics = [json.loads(x) for x in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    last_val = [m["val_loss"] for m in metrics if "val_loss" in m][-1]

    args = ["eval", "loss", "--model", str(toy_dir / "model"), "--labels", str(toy_dir / "labels.json"),
            "--batch-size", "4", "--json"]
    assert main(args + ["--adapter", str(final)]) == 0
    row = json.loads(capsys.readouterr().out)
    # the adapter's own val_fraction and seed pick the same int(12·0.5) examples the trainer validated on
    assert row["num_examples"] == 6 and row["loss"] == pytest.approx(last_val, abs=1e-5)
    # validation is a mean over batches (6 examples: 4 + 2); the default batch size is the adapter's own
    no_batch = [a for a in args if a not in ("--batch-size", "4")]
    assert main(no_batch + ["--adapter", str(final)]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(last_val, abs=1e-6)
    assert main(no_batch + ["--adapter", str(final), "--batch-size", "80"]) == 0  # one batch of 6: another mean
    assert json.loads(capsys.readouterr().out)["loss"] != pytest.approx(last_val, abs=1e-6)
    assert main(args + ["--adapter", str(final), "--val-fraction", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 12
    assert main(args + ["--scale", "1", "--scale", "5"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["scale"] for r in rows] == [1.0, 5.0] and rows[0]["loss"] != rows[1]["loss"]


def test_cli_errors_are_one_line(toy_dir, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("data:\n  batchsize: 8\n")
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "unknown config key data.'batchsize'" in capsys.readouterr().err
    assert main(["eval", "loss", "--model", str(toy_dir / "model"), "--labels", "x.json"]) == 2
    assert "--adapter FILE, or --scale S" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tok = toy_tokenizer()
        cfg = toy_config(__import__("pathlib").Path(root), checkpoint_dir=out, max_steps=4,
                         gradient_accumulation_steps=2)
        train(cfg, model=toy_model(tok), tokenizer=tok)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes
def test_ddp_two_processes_match_one(toy_dir, tmp_path):
    tok = toy_tokenizer()
    single = train(toy_config(toy_dir, checkpoint_dir=str(tmp_path / "one"), max_steps=4,
                              gradient_accumulation_steps=2), model=toy_model(tok), tokenizer=tok)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(toy_dir), str(tmp_path / "two")), nprocs=2, join=True)
    a, b = load_adapter(single.final_path), load_adapter(tmp_path / "two" / "toy" / "final.safetensors")
    for name, value in a.projection.state_dict().items():
        torch.testing.assert_close(b.projection.state_dict()[name], value, atol=1e-5, rtol=1e-5)
    assert float(b.metadata["best_val_loss"]) == pytest.approx(single.best_val_loss, abs=1e-5)


def test_eval_loss_refuses_an_adapter_of_another_model(toy_dir, tmp_path, capsys):
    from selfie_adapters import Adapter, build_projection

    other = Adapter(build_projection("scalar_affine", 32), {"model_name": "someone/else"})
    other = other.save(tmp_path / "o.safetensors")
    args = ["eval", "loss", "--model", str(toy_dir / "model"), "--labels", str(toy_dir / "labels.json"),
            "--adapter", str(other), "--batch-size", "8", "--json"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "someone/else" in err and "--allow-model-mismatch" in err
    with pytest.warns(UserWarning, match="model mismatch allowed"):
        assert main(args + ["--allow-model-mismatch"]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 12

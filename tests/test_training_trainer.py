"""Trainer: learns a toy task with every trainable kind, max_steps and resume are exact (AdamW and SGD
optimizer state), files carry full metadata, per-parameter learning rates, samples and wandb logging."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from selfie_adapters import load_adapter, read_safetensors
from selfie_adapters.adapters.kinds import PROJECTIONS, trainable_kinds
from selfie_adapters.errors import SelfieError
from selfie_adapters.testing import toy_config, toy_config_dict
from selfie_adapters.training.config import config_from_dict
from selfie_adapters.training.loss import SelfieLoss
from selfie_adapters.training.trainer import build_optimizer, lr_factor, train


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _config(root, kind: str = "full_rank", logging: dict | None = None, **training):
    raw = toy_config_dict(root, **training)
    raw["projection"] = {"type": kind, "init_scale": 5.0,
                         "low_rank_rank": 4 if PROJECTIONS[kind].needs_rank else None}
    raw["logging"].update(logging or {})
    return config_from_dict(raw)


@pytest.mark.parametrize("kind", trainable_kinds())
def test_every_kind_lowers_val_loss_and_writes_files(kind, toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = _config(root, kind, checkpoint_dir=str(tmp_path), num_epochs=4, validation_every_n_steps=4,
                  learning_rate=0.2)
    result = train(cfg, model=model, tokenizer=tok)
    vals = [m["val_loss"] for m in _metrics(result.run_dir) if "val_loss" in m]
    assert vals[-1] < (0.8 if kind == "full_rank" else 1.0) * vals[0]
    assert result.best_val_loss == min(vals)
    _, meta = read_safetensors(result.final_path)
    assert meta["global_step"] == str(result.global_step) == "20"
    assert json.loads(meta["config_json"])["training"]["num_epochs"] == 4
    assert json.loads(meta["model_signature"])["hidden_size"] == 32
    assert {"projection_type", "model_name", "model_dim", "normalize_input", "init_scale", "best_val_loss"} <= set(meta)
    cfg_json = json.loads(meta["config_json"])  # what the model filled in is recorded, flat and in the config
    assert meta["template"] == cfg_json["soft_prompt"]["template"] == tok.decode(
        SelfieLoss(model, tok).prompt.tolist())
    assert meta["eos_token"] == cfg_json["data"]["eos_token"] == "<|eot_id|>"
    assert meta["injection_token"] == cfg_json["soft_prompt"]["reserved_token"]
    best = load_adapter(result.best_path)
    assert best.kind == kind and float(best.metadata["best_val_loss"]) == pytest.approx(min(vals))


@pytest.mark.parametrize("kind, optimizer", [(k, "adamw") for k in trainable_kinds()] + [("scalar_affine_plus_low_rank",
                                                                                          "sgd_momentum")])
def test_max_steps_is_exact_and_resume_matches_uninterrupted(kind, optimizer, toy_task, tmp_path):
    root, tok, model = toy_task
    # max_steps 7 with batch 8, 36 train examples: crosses an epoch boundary (5 batches per epoch)
    common = {"max_steps": 7, "optimizer_type": optimizer, "learning_rate": 0.05}
    full = train(_config(root, kind, checkpoint_dir=str(tmp_path / "a"), **common), model=model, tokenizer=tok)
    assert full.global_step == 7
    assert [m["step"] for m in _metrics(full.run_dir) if "loss" in m] == list(range(1, 8))
    cfg = _config(root, kind, checkpoint_dir=str(tmp_path / "b"), **common)
    part = train(cfg, model=model, tokenizer=tok, stop_at_step=3)
    assert part.final_path is None and part.global_step == 3
    state, _ = read_safetensors(part.run_dir / "training_state.safetensors")
    moments = "momentum_buffer" if optimizer == "sgd_momentum" else "exp_avg"
    assert any(k.startswith("optimizer.") and k.endswith(moments) for k in state)  # optimizer state is saved
    resumed = train(cfg, model=model, tokenizer=tok, resume=True)
    assert resumed.global_step == 7
    a, b = load_adapter(full.final_path), load_adapter(resumed.final_path)
    for name, value in a.projection.state_dict().items():
        torch.testing.assert_close(b.projection.state_dict()[name], value, rtol=0, atol=0)
    assert resumed.best_val_loss == full.best_val_loss


def test_autocast_runs_the_frozen_model_in_bf16_and_still_learns(toy_task, tmp_path, monkeypatch):
    root, tok, model = toy_task
    seen = []
    real = torch.autocast

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    fp32 = train(_config(root, checkpoint_dir=str(tmp_path / "a"), max_steps=8), model=model, tokenizer=tok)
    assert seen == []
    bf16 = train(_config(root, checkpoint_dir=str(tmp_path / "b"), max_steps=8, autocast="bfloat16"),
                 model=model, tokenizer=tok)
    assert seen and set(seen) == {torch.bfloat16}
    first = [[m["loss"] for m in _metrics(r.run_dir) if "loss" in m] for r in (fp32, bf16)]
    assert first[1][0] == pytest.approx(first[0][0], rel=0.05) and first[1][0] != first[0][0]  # close, not exact
    vals = [m["val_loss"] for m in _metrics(bf16.run_dir) if "val_loss" in m]
    assert vals[-1] < vals[0]
    assert json.loads(read_safetensors(bf16.final_path)[1]["config_json"])["training"]["autocast"] == "bfloat16"
    with pytest.raises(SelfieError, match="training.autocast 'bf16' is not one of: None, bfloat16, float16"):
        _config(root, autocast="bf16")


def test_per_parameter_learning_rates_and_sgd(toy_task, tmp_path):
    root, _, _ = toy_task
    from selfie_adapters.adapters.kinds import build_projection

    proj = build_projection("scalar_affine_plus_low_rank", 32, rank=4)
    cfg = _config(root, "scalar_affine_plus_low_rank", learning_rate=0.1, scale_learning_rate=0.5,
                  bias_learning_rate=0.01, optimizer_type="sgd_momentum", momentum=0.8)
    opt = build_optimizer(proj, cfg)
    assert isinstance(opt, torch.optim.SGD)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"log_scale": 0.5, "bias": 0.01, "U": 0.1, "V": 0.1}
    assert all(g["momentum"] == 0.8 for g in opt.param_groups)
    assert {g["name"]: g["weight_decay"] for g in opt.param_groups}["log_scale"] == 0.0  # a scale is not decayed
    assert isinstance(build_optimizer(proj, _config(root, "scalar_affine_plus_low_rank")), torch.optim.AdamW)


def test_sample_generations_are_logged_during_training(toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = _config(root, "full_rank", logging={"log_sample_generations": 2, "log_generations_every_n_steps": 3},
                  checkpoint_dir=str(tmp_path), max_steps=6)
    result = train(cfg, model=model, tokenizer=tok)
    samples = [m for m in _metrics(result.run_dir) if "samples" in m]
    assert [m["step"] for m in samples] == [3, 6]
    for m in samples:
        assert len(m["samples"]) == 2 and all(set(s) == {"label", "generated"} for s in m["samples"])
        assert all(isinstance(s["generated"], str) for s in m["samples"])


def test_missing_wandb_warns_and_trains_on(toy_task, tmp_path, monkeypatch):
    root, tok, model = toy_task
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    cfg = _config(root, "scale_only", logging={"use_wandb": True}, checkpoint_dir=str(tmp_path), max_steps=2)
    with pytest.warns(UserWarning, match="wandb is not installed; continuing without it"):
        result = train(cfg, model=model, tokenizer=tok)
    assert result.global_step == 2 and result.final_path.exists()


def test_progress_callback_reports_every_step(toy_task, tmp_path):
    root, tok, model = toy_task
    seen = []
    train(toy_config(root, checkpoint_dir=str(tmp_path), max_steps=3), model=model, tokenizer=tok,
          progress=lambda step, total, info: seen.append((step, total, sorted(info))))
    assert seen == [(0, 3, [])] + [(s, 3, ["loss", "lr", "steps_per_s"]) for s in (1, 2, 3)]


def test_resume_without_state_says_how_to_fix(toy_task, tmp_path):
    root, tok, model = toy_task
    with pytest.raises(ValueError, match="start without --resume"):
        train(toy_config(root, checkpoint_dir=str(tmp_path)), model=model, tokenizer=tok, resume=True)


def test_schedule_shapes():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == 1.0
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert 0 < lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "constant") == 1.0


def test_run_reports_where_its_time_went(toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = _config(root, "full_rank", logging={"log_sample_generations": 1, "log_generations_every_n_steps": 2},
                  checkpoint_dir=str(tmp_path), max_steps=4, validation_every_n_steps=2)
    result = train(cfg, model=model, tokenizer=tok)
    times = result.timing
    assert times.steps == 4
    assert {"load", "forward", "backward", "optimizer", "validation", "samples", "checkpoints", "logging"} == set(
        times.seconds)
    assert all(v > 0 for v in times.seconds.values())
    last = _metrics(result.run_dir)[-1]
    assert last["step"] == 4 and last["timing_s"] == pytest.approx(times.seconds, abs=1e-3)
    in_steps, overall = times.rates()
    assert in_steps == pytest.approx(4 / times.step_seconds) and 0 < overall < in_steps
    line = times.summary()
    assert line.startswith("load ") and "steps/s in the steps" in line and "validation" in line
    # the step stages' shares add up to the whole step
    shares = [int(x.split()[1].rstrip("%),")) for x in line.split("(")[1].split(")")[0].split(", ")]
    assert 98 <= sum(shares) <= 102


def test_low_rank_kinds_default_to_rank_64(toy_task, tmp_path):
    root, tok, model = toy_task
    raw = toy_config_dict(root, checkpoint_dir=str(tmp_path), max_steps=1)
    raw["projection"] = {"type": "scalar_affine_plus_low_rank", "init_scale": 5.0}  # no low_rank_rank
    result = train(config_from_dict(raw), model=model, tokenizer=tok)
    adapter = load_adapter(result.final_path)
    assert adapter.projection.U.shape[1] == 64 and adapter.metadata["low_rank_rank"] == "64"
    assert json.loads(adapter.metadata["config_json"])["projection"]["low_rank_rank"] == 64

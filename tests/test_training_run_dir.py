"""Run folders: no silent restart, resume only with the same settings, metrics without duplicates,
one-file atomic state, no escape from checkpoint_dir, divergence stops with the state kept, and
every config value's type and range checked before a model is loaded."""

from __future__ import annotations

import json

import pytest
import torch

from selfie_adapters import files
from selfie_adapters.errors import SelfieError
from selfie_adapters.testing import toy_config, toy_config_dict
from selfie_adapters.training.checkpoint import STATE_TENSORS, read_state_info
from selfie_adapters.training.config import config_from_dict
from selfie_adapters.training.trainer import train


def _steps(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def test_finished_run_needs_resume_or_overwrite(toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = toy_config(root, checkpoint_dir=str(tmp_path), max_steps=3)
    first = train(cfg, model=model, tokenizer=tok)
    before = (first.run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(SelfieError, match="already holds a run .* --resume .* --overwrite"):
        train(cfg, model=model, tokenizer=tok)
    assert (first.run_dir / "metrics.jsonl").read_bytes() == before  # nothing touched
    with pytest.raises(SelfieError, match="contradict"):
        train(cfg, model=model, tokenizer=tok, resume=True, overwrite=True)
    again = train(cfg, model=model, tokenizer=tok, overwrite=True)
    assert _steps(again.run_dir) == [1, 2, 3]  # replaced, not appended


def test_resume_refuses_changed_settings_but_allows_safe_ones(toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = toy_config(root, checkpoint_dir=str(tmp_path), max_steps=6)
    train(cfg, model=model, tokenizer=tok, stop_at_step=2)
    raw = toy_config_dict(root, checkpoint_dir=str(tmp_path), max_steps=6, learning_rate=5.0)
    raw["seed"] = 7
    with pytest.raises(SelfieError, match=r"changed settings: seed, training.learning_rate\. Only these"):
        train(config_from_dict(raw), model=model, tokenizer=tok, resume=True)
    # left unset, the model-filled defaults resume as saved; set to something else, they are a change
    other_eos = toy_config_dict(root, checkpoint_dir=str(tmp_path), max_steps=6)
    other_eos["data"]["eos_token"] = "<|end_of_text|>"
    with pytest.raises(SelfieError, match=r"changed settings: data.eos_token\. Only these"):
        train(config_from_dict(other_eos), model=model, tokenizer=tok, resume=True)
    safe = toy_config_dict(root, checkpoint_dir=str(tmp_path), max_steps=8, validation_every_n_steps=3)
    safe["logging"]["log_every_n_steps"] = 1
    result = train(config_from_dict(safe), model=model, tokenizer=tok, resume=True)
    assert result.global_step == 8 and result.final_path.exists()
    assert read_state_info(result.run_dir / STATE_TENSORS)["config"]["training"]["max_steps"] == 8


def test_resume_truncates_metrics_to_the_saved_step(toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = toy_config(root, checkpoint_dir=str(tmp_path), max_steps=6)
    part = train(cfg, model=model, tokenizer=tok, stop_at_step=3)
    metrics = part.run_dir / "metrics.jsonl"
    # killed after logging steps 4-5 but before their checkpoint, mid-way through a line
    metrics.write_text(metrics.read_text() + '{"step": 4, "loss": 1.0}\n{"step": 5, "loss": 1.0}\n{"step": 6, "lo')
    train(cfg, model=model, tokenizer=tok, resume=True)
    assert _steps(part.run_dir) == [1, 2, 3, 4, 5, 6]


def test_state_is_one_atomic_file(toy_task, tmp_path, monkeypatch):
    root, tok, model = toy_task
    cfg = toy_config(root, checkpoint_dir=str(tmp_path), max_steps=4, checkpoint_every_n_steps=2)
    result = train(cfg, model=model, tokenizer=tok, stop_at_step=2)
    assert sorted(p.name for p in result.run_dir.glob("training_state*")) == [STATE_TENSORS]
    saved = (result.run_dir / STATE_TENSORS).read_bytes()

    def torn(tensors, filename, metadata=None):  # a crash half-way through writing the state
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "save_file", torn)
    with pytest.raises(OSError):
        train(cfg, model=model, tokenizer=tok, resume=True)
    assert (result.run_dir / STATE_TENSORS).read_bytes() == saved
    assert not list(result.run_dir.glob("*.tmp"))
    monkeypatch.undo()
    assert train(cfg, model=model, tokenizer=tok, resume=True).global_step == 4


def test_divergence_stops_and_keeps_the_last_state(toy_task, tmp_path):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    root, tok, model = toy_task
    cfg = toy_config(root, checkpoint_dir=str(tmp_path), max_steps=6, checkpoint_every_n_steps=2)
    updates = []

    def poison_third_update(optimizer, args, kwargs):
        updates.append(1)
        if len(updates) == 3:  # the 3rd update blows up
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("nan"))

    handle = register_optimizer_step_post_hook(poison_third_update)
    try:
        with pytest.raises(SelfieError, match=r"diverged at step 3 .*non-finite parameter.*state of step 2 is kept"):
            train(cfg, model=model, tokenizer=tok)
    finally:
        handle.remove()
    assert read_state_info(cfg.run_dir / STATE_TENSORS)["global_step"] == 2
    assert not (cfg.run_dir / "final.safetensors").exists()


BAD_CONFIG = [  # (dotted key, value, message fragment)
    ("training.learning_rate", [1, 2], "must be a number"),
    ("training.learning_rate", float("inf"), "finite"),
    ("training.learning_rate", ".inf", "must be a number"),  # a string; YAML's .inf is the float (below)
    ("training.learning_rate", 0, "must be > 0"),
    ("training.learning_rate", "fast", "must be a number"),
    ("seed", "abc", "seed must be an integer"),
    ("seed", -1, "seed must be >= 0"),
    ("seed", 1.5, "seed must be an integer"),
    ("projection.normalize_input", "maybe", "true or false"),
    ("projection.init_scale", -1.0, "must be > 0"),
    ("projection.low_rank_rank", "abc", "integer"),
    ("projection.low_rank_rank", 0, ">= 1"),
    ("training.max_steps", 0, ">= 1"),
    ("training.max_steps", True, "integer"),
    ("training.num_epochs", 2.5, "integer"),
    ("training.warmup_steps", -3, ">= 0"),
    ("training.weight_decay", float("nan"), "finite"),
    ("training.gradient_clip_norm", 0, "> 0"),
    ("training.val_fraction", 1.5, "<= 1"),
    ("training.label_smoothing", 1.0, "[0, 1)"),
    ("training.momentum", -0.5, ">= 0"),
    ("training.optimizer_type", "adam", "not one of"),
    ("training.scheduler_type", None, "must be a string"),
    ("training.checkpoint_dir", 5, "must be a string"),
    ("data.batch_size", 0, ">= 1"),
    ("data.labels_file", ["a"], "must be a string"),
    ("model.dtype", "float64", "not one of"),
    ("model.enable_gradient_checkpointing", "yes", "true or false"),
    ("logging.log_every_n_steps", 0, ">= 1"),
    ("experiment_name", "../../escape", "plain folder name"),
    ("experiment_name", "..", "plain folder name"),
    ("experiment_name", 3, "must be a string"),
    ("soft_prompt.template", "a prompt without the placeholder", "does not contain"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_CONFIG, ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIG])
def test_bad_config_values_are_refused(tmp_path, key, value, message):
    raw = toy_config_dict(tmp_path)
    section, _, name = key.rpartition(".")
    (raw.setdefault(section, {}) if section else raw)[name] = value
    with pytest.raises(SelfieError, match=rf".*{__import__('re').escape(message)}"):
        config_from_dict(raw)


def test_yaml_infinity_is_refused(tmp_path):
    from selfie_adapters.training.config import load_config

    (tmp_path / "c.yaml").write_text("training:\n  learning_rate: .inf\n")
    with pytest.raises(SelfieError, match="training.learning_rate must be a finite number"):
        load_config(tmp_path / "c.yaml")


def test_checkpoint_dir_naming_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SelfieError, match="is a file, not a folder"):
        toy_config(tmp_path, checkpoint_dir=str(tmp_path / "file"))


def test_resume_accepts_settings_filled_in_at_start():
    """A config that left the rank (or init scale) unset resumes: the saved state holds the filled-in value."""
    from selfie_adapters.training.run_dir import changed_settings

    saved = {"projection": {"low_rank_rank": 64, "init_scale": 3.2}}
    assert changed_settings(saved, {"projection": {"low_rank_rank": None, "init_scale": None}}) == []
    assert changed_settings(saved, {"projection": {"low_rank_rank": 16, "init_scale": None}}) == [
        "projection.low_rank_rank"]

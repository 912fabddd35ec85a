"""Trainer: learns a toy task, max_steps is exact, resume is exact, files carry full metadata."""

from __future__ import annotations

import json

import pytest
import torch

from selfie_adapters import load_adapter, read_safetensors
from selfie_adapters.testing import toy_config, toy_model, toy_tokenizer, write_toy_data
from selfie_adapters.training.loss import SelfieLoss
from selfie_adapters.training.trainer import lr_factor, train


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_data(root)
    tok = toy_tokenizer()
    return root, tok, toy_model(tok)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_val_loss_and_writes_files(toy, tmp_path):
    root, tok, model = toy
    cfg = toy_config(root, checkpoint_dir=str(tmp_path), num_epochs=4, validation_every_n_steps=4,
                     learning_rate=0.2)
    result = train(cfg, model=model, tokenizer=tok, show_progress=False)
    vals = [m["val_loss"] for m in _metrics(result.run_dir) if "val_loss" in m]
    assert vals[-1] < 0.8 * vals[0]
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
    assert best.kind == "full_rank" and float(best.metadata["best_val_loss"]) == pytest.approx(min(vals))


def test_max_steps_is_exact_and_resume_matches_uninterrupted(toy, tmp_path):
    root, tok, model = toy
    # max_steps 7 with batch 8, 36 train examples: crosses an epoch boundary (5 batches per epoch)
    full = train(toy_config(root, checkpoint_dir=str(tmp_path / "a"), max_steps=7), model=model, tokenizer=tok,
                 show_progress=False)
    assert full.global_step == 7
    assert [m["step"] for m in _metrics(full.run_dir) if "loss" in m] == list(range(1, 8))
    cfg = toy_config(root, checkpoint_dir=str(tmp_path / "b"), max_steps=7)
    part = train(cfg, model=model, tokenizer=tok, stop_at_step=3, show_progress=False)
    assert part.final_path is None and part.global_step == 3
    resumed = train(cfg, model=model, tokenizer=tok, resume=True, show_progress=False)
    assert resumed.global_step == 7
    a, b = load_adapter(full.final_path), load_adapter(resumed.final_path)
    for name, value in a.projection.state_dict().items():
        torch.testing.assert_close(b.projection.state_dict()[name], value, rtol=0, atol=0)
    assert resumed.best_val_loss == full.best_val_loss


def test_resume_without_state_says_how_to_fix(toy, tmp_path):
    root, tok, model = toy
    with pytest.raises(ValueError, match="start without --resume"):
        train(toy_config(root, checkpoint_dir=str(tmp_path)), model=model, tokenizer=tok, resume=True,
              show_progress=False)


def test_schedule_shapes():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == 1.0
    assert lr_factor(10, 100, 10, "cosine") == 1.0
    assert 0 < lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "constant") == 1.0

"""Files written by the reference implementation: mean `.pt`, adapter and training checkpoints.

The fixtures below write files the way the reference's scripts do (a bare tensor saved with
torch.save; a checkpoint dict with its optimizer grouped scale / bias / rest), from its documented
layout, so the tests need no reference code.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR

from selfie_adapters import SelfieError, build_projection, load_adapter, load_mean_vectors
from selfie_adapters.cli import main
from selfie_adapters.compat.convert import convert, reference_param_order
from selfie_adapters.testing import toy_config_dict, toy_model, toy_tokenizer, write_toy_data
from selfie_adapters.training.checkpoint import load_state
from selfie_adapters.training.config import config_from_dict
from selfie_adapters.training.trainer import build_optimizer


def reference_config(**sections) -> dict:
    """A config dict as the reference writes into its checkpoints (every section, its extra keys)."""
    cfg = {"seed": 42, "experiment_name": None,
           "model": {"name": "meta-llama/Meta-Llama-3.1-8B-Instruct", "device_map": "auto", "dtype": "bfloat16",
                     "enable_gradient_checkpointing": True, "load_in_8bit": False},
           "data": {"labels_file": "labels.json", "batch_size": 80, "strip_labels": True},
           "projection": {"type": "scalar_affine", "normalize_input": True, "init_scale": 5.0,
                          "low_rank_rank": None, "low_rank_init_factor": 0.01},
           "soft_prompt": {},
           "training": {"learning_rate": 0.01, "scale_learning_rate": None, "direction_learning_rate": None,
                        "bias_learning_rate": None, "val_fraction": 0.1, "checkpoint_dir": "./checkpoints"},
           "logging": {"use_mlflow": False, "mlflow_tracking_uri": "http://localhost:5000",
                       "mlflow_experiment_name": "selfie-adapter-training", "use_wandb": False}}
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def write_reference_checkpoint(path, config: dict, dim: int, steps: int = 3):
    """Train a projection a few AdamW steps with the reference's parameter groups, save its checkpoint dict."""
    p = config["projection"]
    torch.manual_seed(1)
    proj = build_projection(p["type"], dim, rank=p.get("low_rank_rank"), init_scale=p["init_scale"])
    named = dict(proj.named_parameters())
    groups = [{"params": [v for k, v in named.items() if "log_scale" in k], "weight_decay": 0.0},
              {"params": [v for k, v in named.items() if "bias" in k], "weight_decay": 0.01},
              {"params": [v for k, v in named.items() if k not in ("log_scale", "bias")], "weight_decay": 0.01}]
    opt = torch.optim.AdamW([dict(g, lr=0.01) for g in groups if g["params"]])
    warmup, cosine = LinearLR(opt, start_factor=1e-6, total_iters=2), CosineAnnealingLR(opt, T_max=10)
    for _ in range(steps):
        proj(torch.randn(4, dim)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        warmup.step()
    torch.save({"global_step": steps, "current_epoch": 0, "current_batch_in_epoch": steps,
                "projection_state": proj.state_dict(), "optimizer_state": opt.state_dict(),
                "scheduler_state": warmup.state_dict(), "warmup_scheduler_state": warmup.state_dict(),
                "main_scheduler_state": cosine.state_dict(), "config": config, "best_val_loss": 2.5,
                "model_dim": dim, "checkpoint_format_version": 1, "projection_num_params": proj.num_parameters()},
               path)
    return proj, opt


def test_bare_tensor_mean_pt_reads_and_converts(tmp_path, capsys):
    mean = torch.randn(16)
    torch.save(mean, tmp_path / "fifty_thousand_things_l19_mean.pt")  # the reference's naming
    got = load_mean_vectors(tmp_path / "fifty_thousand_things_l19_mean.pt")
    assert list(got) == [19]
    torch.testing.assert_close(got[19], mean)
    assert main(["convert", str(tmp_path / "fifty_thousand_things_l19_mean.pt"), "--out",
                 str(tmp_path / "mean-vectors.safetensors")]) == 0
    assert "wrote" in capsys.readouterr().out
    torch.testing.assert_close(load_file(str(tmp_path / "mean-vectors.safetensors"))["layer_19"], mean)
    torch.save(mean, tmp_path / "mean.pt")  # no layer in the name
    with pytest.raises(SelfieError, match=r"does not say the layer .*--layer L"):
        load_mean_vectors(tmp_path / "mean.pt")
    assert list(load_mean_vectors(tmp_path / "mean.pt", layer=7)) == [7]
    assert main(["convert", str(tmp_path / "mean.pt"), "--out", str(tmp_path / "m7")]) == 2
    assert "--layer" in capsys.readouterr().err


def test_reference_adapter_pt_converts_to_identical_safetensors(tmp_path):
    write_reference_checkpoint(tmp_path / "ck.pt", reference_config(), 16)
    ckpt = torch.load(tmp_path / "ck.pt", weights_only=True)
    del ckpt["optimizer_state"]  # an inference-only checkpoint
    torch.save(ckpt, tmp_path / "adapter.pt")
    result = convert(tmp_path / "adapter.pt", tmp_path / "adapter.safetensors")
    assert result.kind == "adapter"
    x = torch.randn(3, 16)
    torch.testing.assert_close(load_adapter(result.paths[0]).transform(x), load_adapter(tmp_path / "adapter.pt")
                               .transform(x))


@pytest.mark.parametrize("kind, rank", [("scalar_affine_plus_low_rank", 2), ("full_rank", None)])
def test_training_checkpoint_optimizer_state_maps_by_parameter_name(tmp_path, kind, rank):
    cfg = reference_config(projection={"type": kind, "low_rank_rank": rank})
    proj, opt = write_reference_checkpoint(tmp_path / "run_step_3.pt", cfg, 16)
    result = convert(tmp_path / "run_step_3.pt", tmp_path / "run")
    assert result.kind == "training" and result.next_step == f"selfie train {tmp_path / 'run' / 'config.yaml'} --resume"
    ours = build_projection(kind, 16, rank=rank)
    ours_opt = build_optimizer(ours, config_from_dict(cfg))
    info = load_state(tmp_path / "run" / "training_state.safetensors", ours, ours_opt)
    assert info["global_step"] == 3 and info["best_val_loss"] == 2.5
    for name, value in proj.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value)
    names = [n for n, _ in ours.named_parameters()]
    ref_ids = {n: i for i, n in enumerate(reference_param_order(ours))}
    for i, name in enumerate(names):  # moments land on the parameter they belong to
        want = opt.state_dict()["state"][ref_ids[name]]
        torch.testing.assert_close(ours_opt.state_dict()["state"][i]["exp_avg"], want["exp_avg"])
        torch.testing.assert_close(ours_opt.state_dict()["state"][i]["exp_avg_sq"], want["exp_avg_sq"])
    assert (tmp_path / "run" / "step_3.safetensors").is_file()


def test_converted_training_checkpoint_resumes(tmp_path, capsys):
    write_toy_data(tmp_path)
    tok = toy_tokenizer()
    toy_model(tok, name=str(tmp_path / "model")).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    raw = toy_config_dict(tmp_path, max_steps=6)
    raw["model"]["name"] = str(tmp_path / "model")
    raw["training"].update(direction_learning_rate=None)  # as the reference writes it
    raw["logging"].update(use_mlflow=False)
    write_reference_checkpoint(tmp_path / "toy_step_3_best.pt", raw, 32)
    # --resume pointed at the reference file: one clear line, no UnicodeDecodeError
    (tmp_path / "c.yaml").write_text(json.dumps(raw))
    code = main(["train", str(tmp_path / "c.yaml"), "--set",
                 f"training.resume_from_checkpoint={tmp_path / 'toy_step_3_best.pt'}", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "selfie convert" in err and "Traceback" not in err
    assert main(["convert", str(tmp_path / "toy_step_3_best.pt"), "--out", str(tmp_path / "runs" / "toy")]) == 0
    assert "--resume" in capsys.readouterr().out
    assert (tmp_path / "runs" / "toy" / "best.safetensors").is_file()
    assert main(["train", str(tmp_path / "runs" / "toy" / "config.yaml"), "--resume", "--no-progress"]) == 0
    capsys.readouterr()
    metrics = [json.loads(x) for x in (tmp_path / "runs" / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert min(m["step"] for m in metrics) == 4 and max(m["step"] for m in metrics) == 6
    assert load_adapter(tmp_path / "runs" / "toy" / "final.safetensors").metadata["global_step"] == "6"

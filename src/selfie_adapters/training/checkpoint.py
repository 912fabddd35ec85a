"""What a run writes: the adapter files (``best``/``final``, published format) and the training
state that makes ``--resume`` continue exactly (tensors in safetensors, the rest in JSON; no pickle).

The data order is a pure function of (seed, step), so the state is just: adapter tensors,
optimizer tensors, the step counter and the best validation loss so far.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..adapters.artifact import Adapter
from ..adapters.guard import model_signature
from ..adapters.kinds import Projection
from ..errors import SelfieError, first_line
from ..files import read_safetensors, save_tensors
from .config import TrainConfig

STATE_JSON, STATE_TENSORS = "training_state.json", "training_state.safetensors"
STATE_FORMAT = 1


def save_adapter(path: Path, projection: Projection, cfg: TrainConfig, model, *, global_step: int,
                 best_val_loss: float | None, questions: list | None = None) -> Path:
    """The published single-file format with the full training config and the model signature (and, when it
    was trained on question–answer pairs, its prompts: metadata ``questions``, a JSON list of
    ``{"question", "answer_prefix"}``)."""
    meta = {"model_name": cfg.model.name, "config_json": cfg.to_json()}
    extra = {"global_step": str(global_step), "model_signature": json.dumps(model_signature(model)),
             # what `describe` needs to prompt the model the way the adapter was trained
             "template": cfg.soft_prompt.template, "injection_token": cfg.soft_prompt.reserved_token,
             "eos_token": cfg.data.eos_token}
    if best_val_loss is not None:
        extra["best_val_loss"] = repr(float(best_val_loss))
    if questions:
        extra["questions"] = json.dumps([{"question": q, "answer_prefix": p} for q, p in questions])
    return Adapter(projection, meta).save(path, **extra)


def save_state(run_dir: Path, projection: Projection, optimizer: torch.optim.Optimizer, *, global_step: int,
               best_val_loss: float | None, cfg: TrainConfig) -> Path:
    """Write the resumable state as one file, atomically: tensors + a JSON header in its metadata."""
    tensors = {f"projection.{k}": v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}
    for pid, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer.{pid}.{key}"] = t.detach().cpu().contiguous()
    info = {"format": STATE_FORMAT, "global_step": global_step, "best_val_loss": best_val_loss,
            "config": cfg.to_dict()}
    path = save_tensors(tensors, run_dir / STATE_TENSORS,
                        {"global_step": str(global_step), "training_state": json.dumps(info)}, dtype=None)
    (run_dir / STATE_JSON).unlink(missing_ok=True)  # the old two-file format, now stale
    return path


def state_path(cfg: TrainConfig) -> Path:
    """Where to resume from: ``training.resume_from_checkpoint`` (a run folder or its state file) or the run dir."""
    src = cfg.training.resume_from_checkpoint
    path = cfg.resolve(src) if src else cfg.run_dir
    if path.is_dir() or not path.suffix:
        path = path / STATE_TENSORS
    return path.with_name(STATE_TENSORS) if path.name == STATE_JSON else path


def read_state_info(path: Path) -> dict:
    """The JSON part of a saved state (global_step, best_val_loss, config) without loading tensors."""
    if not path.is_file() and not path.with_name(STATE_JSON).is_file():
        raise SelfieError(f"no training state at {path}; start without --resume, or point "
                          "training.resume_from_checkpoint at a run folder that has one")
    if path.is_file() and (path.suffix in (".pt", ".pth") or zipfile.is_zipfile(path)):
        raise SelfieError(f"{path} is a PyTorch checkpoint (the reference trainer's format), not a selfie "
                          f"training state; convert it: selfie convert {path} --out RUN_DIR, then "
                          "selfie train RUN_DIR/config.yaml --resume")
    legacy = path.with_name(STATE_JSON)
    if legacy.is_file():  # written by an older version: JSON beside the tensors
        info = json.loads(legacy.read_text(encoding="utf-8"))
        _, meta = read_safetensors(path)
        if info.get("format") != STATE_FORMAT or meta.get("global_step") != str(info.get("global_step")):
            raise SelfieError(f"{legacy}: state JSON and tensors disagree (step {info.get('global_step')} vs "
                              f"{meta.get('global_step')}); the run was interrupted while saving; restart it "
                              "with --overwrite")
        return info
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {})["training_state"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise SelfieError(f"{path} is not a training state written by selfie ({type(e).__name__}); "
                          "restart the run with --overwrite") from None


def load_state(path: Path, projection: Projection, optimizer: torch.optim.Optimizer) -> dict:
    """Restore adapter + optimizer in place; return the JSON part (global_step, best_val_loss, ...)."""
    info = read_state_info(path)
    tensors, _ = read_safetensors(path)
    proj_state = {k.removeprefix("projection."): v for k, v in tensors.items() if k.startswith("projection.")}
    try:
        projection.load_state_dict(proj_state, strict=True)
    except RuntimeError as e:
        raise SelfieError(f"{path}: saved adapter does not fit this config ({first_line(e)}); "
                          "resume with the config the run was started with") from None
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": optimizer.state_dict()["param_groups"]})
    return info

"""The run folder: starting over needs ``overwrite``, resuming needs the same settings.

A run folder holds ``training_state.safetensors``, ``metrics.jsonl``, ``best.safetensors`` and
``final.safetensors``. Starting a run where one already is would silently replace its state and
mix its metrics, so it needs ``--resume`` (continue) or ``--overwrite`` (start over). ``--resume``
refuses settings that would change what was trained so far; only those in ``RESUME_SAFE`` (how
long to train, how often to evaluate/save/log, where to write) may change.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SelfieError
from ..files import write_text
from .checkpoint import STATE_JSON, STATE_TENSORS, read_state_info, state_path
from .config import TrainConfig

RUN_FILES = (STATE_TENSORS, STATE_JSON, "metrics.jsonl", "best.safetensors", "final.safetensors")
RESUME_SAFE = ("experiment_name", "training.max_steps", "training.num_epochs",
               "training.validation_every_n_steps", "training.checkpoint_every_n_steps",
               "training.save_final_checkpoint", "training.resume_from_checkpoint", "training.checkpoint_dir",
               "data.num_workers", "model.device_map", "logging.*")
# Left unset (None), these are filled in (from the model, or the kind's default rank) when training
# starts; the saved state holds the filled-in values, which the same model fills in the same way.
MODEL_DEFAULTS = ("data.eos_token", "soft_prompt.template", "soft_prompt.reserved_token", "projection.init_scale",
                  "projection.low_rank_rank")


def existing_run_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_dir(cfg: TrainConfig, *, resume: bool, overwrite: bool) -> dict | None:
    """Before the model loads: may this run start here? Returns the saved state's info when resuming."""
    if resume and overwrite:
        raise SelfieError("--resume and --overwrite contradict each other; choose one")
    resume = resume or bool(cfg.training.resume_from_checkpoint)
    if not resume:
        found = existing_run_files(cfg.run_dir)
        if found and not overwrite:
            raise SelfieError(f"{cfg.run_dir} already holds a run ({', '.join(found)}); pass --resume to "
                              "continue it, --overwrite to start over, or set another experiment_name")
        return None
    info = read_state_info(state_path(cfg))
    changed = changed_settings(info.get("config") or {}, cfg.to_dict())
    if changed:
        raise SelfieError(f"--resume with changed settings: {', '.join(changed)}. Only these may change when "
                          f"resuming: {', '.join(RESUME_SAFE)}. Use the run's settings, or --overwrite to start "
                          "over")
    return info


def changed_settings(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, except the ones that are safe to change on resume."""
    out = []
    flat_saved, flat_current = _flatten(saved), _flatten(current)
    for key in sorted(set(flat_saved) | set(flat_current)):
        if key in RESUME_SAFE or f"{key.split('.')[0]}.*" in RESUME_SAFE:
            continue
        if key in MODEL_DEFAULTS and flat_current.get(key) is None:
            continue
        if flat_saved.get(key) != flat_current.get(key):
            out.append(key)
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not prefix:  # only config sections nest; ratio dicts are values
            out.update(_flatten(v, f"{k}."))
        else:
            out[prefix + k] = json.loads(json.dumps(v))  # tuples → lists, as stored
    return out


def clear_run(run_dir: Path) -> None:
    """``--overwrite``: remove the previous run's files (only those; anything else stays)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics of steps <= ``step`` (the resumed state), so no step is logged twice."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a kill
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    write_text(path, "".join(kept))

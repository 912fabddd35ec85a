"""Reference-implementation files → this project's formats (``selfie convert``).

* a bare-tensor mean ``…_l{L}_mean.pt`` (or a dict of them) → ``mean-vectors.safetensors`` (``layer_L``);
* an adapter checkpoint ``.pt`` (``projection_state`` + ``config``) → the published ``.safetensors``;
* a training checkpoint (``{run}_step_N[_best|_final].pt``, with ``optimizer_state``) → a run folder:
  the adapter, ``config.yaml`` and ``training_state.safetensors``, so that
  ``selfie train DIR/config.yaml --resume`` continues it (adapter and optimiser moments exact; the
  learning-rate schedule is recomputed from the step, the data order is this project's).

``.pt`` files are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import ast
import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml

from ..adapters.artifact import Adapter, build_from_state, load_adapter
from ..adapters.kinds import Projection
from ..errors import SelfieError
from ..files import load_torch, write_text
from ..vectors.tensor_files import means_from_torch, save_mean_vectors

if TYPE_CHECKING:
    from ..training.config import TrainConfig


@dataclass
class Converted:
    """What ``convert`` wrote: ``kind`` is ``mean``, ``adapter`` or ``training``."""

    kind: str
    paths: list[Path] = field(default_factory=list)
    next_step: str | None = None  # the command that uses the result


def reference_kind(obj) -> str:
    """Classify a loaded reference ``.pt``: ``mean``, ``adapter`` or ``training`` (a resumable checkpoint)."""
    if isinstance(obj, dict) and "projection_state" in obj:
        return "training" if "optimizer_state" in obj else "adapter"
    if torch.is_tensor(obj) or (isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())):
        return "mean"
    raise SelfieError("not a reference file this project knows: expected a mean-vector tensor, or a checkpoint "
                      "dict with 'projection_state' and 'config'")


def convert(source: str | os.PathLike, out: str | os.PathLike, *, layer: int | None = None,
            overrides: list[str] | tuple[str, ...] = ()) -> Converted:
    """Convert one reference file; ``out`` is a file (mean, adapter) or a run folder (training checkpoint).

    >>> convert("wikipedia_l19_mean.pt", "mean-vectors.safetensors").paths
    [PosixPath('mean-vectors.safetensors')]
    """
    src, out = Path(source).expanduser(), Path(out).expanduser()
    if not src.is_file():
        raise SelfieError(f"file not found: {source}")
    obj = load_torch(src)
    kind = reference_kind(obj)
    if kind == "mean":
        path = save_mean_vectors(means_from_torch(obj, src.name, layer), _with_suffix(out, ".safetensors"))
        return Converted(kind, [path], f"selfie describe ... --mean-vectors {path} --layer L")
    if kind == "adapter":
        path = load_adapter(src).save(_with_suffix(out, ".safetensors"))
        return Converted(kind, [path], f"selfie inspect {path}")
    return _convert_training(obj, src, out, overrides)


def _with_suffix(out: Path, suffix: str) -> Path:
    if out.is_dir():
        raise SelfieError(f"--out {out} is a folder; give a file name ending in {suffix}")
    return out if out.suffix == suffix else out.with_name(out.name + suffix)


def _convert_training(ckpt: dict, src: Path, run_dir: Path, overrides) -> Converted:
    """A reference training checkpoint → a run folder that ``selfie train DIR/config.yaml --resume`` continues."""
    from ..training.checkpoint import save_state
    from ..training.trainer import build_optimizer

    if run_dir.suffix:
        raise SelfieError(f"a training checkpoint converts to a run folder; give --out a folder, got {run_dir}")
    if (run_dir / "training_state.safetensors").exists():
        raise SelfieError(f"{run_dir} already holds a training state; choose another --out folder")
    cfg = reference_config(ckpt.get("config") or {}, run_dir, overrides)
    adapter = _adapter_of(ckpt, cfg, src.name)
    optimizer = build_optimizer(adapter.projection, cfg)
    mapped = reference_optimizer_state(ckpt["optimizer_state"], adapter.projection, src.name)
    optimizer.load_state_dict({"state": mapped, "param_groups": optimizer.state_dict()["param_groups"]})
    step, best = int(ckpt.get("global_step") or 0), ckpt.get("best_val_loss")
    best = None if best is None or best == float("inf") else float(best)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    state = save_state(run_dir, adapter.projection, optimizer, global_step=step, best_val_loss=best, cfg=cfg)
    tag = re.search(r"_(best|final)\.pt$", src.name)
    name = f"{tag.group(1)}.safetensors" if tag else f"step_{step}.safetensors"
    extra = {"global_step": str(step)} | ({"best_val_loss": repr(best)} if best is not None else {})
    weights = adapter.save(run_dir / name, **extra)
    return Converted("training", [config_path, state, weights], f"selfie train {config_path} --resume")


def reference_config(raw: dict, run_dir: Path, overrides=()) -> TrainConfig:
    """The reference's config dict (as stored in its checkpoints) as ours, with the run folder at ``run_dir``.

    Its ratio keys for grouped datasets were stored as ``"['a', 'b']"`` strings; they become list entries.
    Relative data paths are made absolute (from the working directory), as the reference resolved them.
    """
    from ..training.config import apply_override, config_from_dict

    if not isinstance(raw, dict) or "projection" not in raw:
        raise SelfieError("the checkpoint's 'config' has no 'projection' section; cannot rebuild its settings")
    raw = copy.deepcopy(raw)
    data = raw.setdefault("data", {}) or {}
    for key in ("train_dataset_ratios", "val_dataset_ratios"):
        ratios = data.get(key)
        if isinstance(ratios, dict) and any(str(k).startswith("[") for k in ratios):
            data[key] = [{"datasets": ast.literal_eval(k) if str(k).startswith("[") else k, "ratio": v}
                         for k, v in ratios.items()]
    training = raw.setdefault("training", {}) or {}
    raw["experiment_name"] = run_dir.name
    training["checkpoint_dir"], training["resume_from_checkpoint"] = str(run_dir.resolve().parent), None
    for assignment in overrides:
        apply_override(raw, assignment)
    if data.get("labels_file") and not Path(data["labels_file"]).is_absolute():
        data["labels_file"] = str(Path(data["labels_file"]).resolve())
    return config_from_dict(raw)


def _adapter_of(ckpt: dict, cfg, name: str) -> Adapter:
    meta = {"projection_type": cfg.projection.type, "model_name": cfg.model.name, "config_json": cfg.to_json()}
    state = {k.removeprefix("projection."): v for k, v in ckpt["projection_state"].items()}
    return build_from_state(state, meta, name)


def reference_param_order(projection: Projection) -> list[str]:
    """Parameter names in the order the reference's optimizer numbers them: its groups are scale
    (``log_scale``), direction (``scale_direction``), bias, then the rest (U, V, weight)."""
    def group(name: str) -> int:
        return 1 if "scale_direction" in name else 0 if "log_scale" in name else 2 if "bias" in name else 3
    return sorted((n for n, _ in projection.named_parameters()), key=group)  # stable: module order within groups


def reference_optimizer_state(opt_state: dict, projection: Projection, name: str) -> dict[int, dict]:
    """The reference optimizer's per-parameter state, renumbered for ``build_optimizer`` (one group per
    parameter, in module order)."""
    ours = [n for n, _ in projection.named_parameters()]
    theirs = reference_param_order(projection)
    counted = sum(len(g.get("params", [])) for g in opt_state.get("param_groups", []))
    if counted != len(ours):
        raise SelfieError(f"{name}: its optimizer has {counted} parameters, a {projection.kind} adapter has "
                          f"{len(ours)} ({', '.join(ours)})")
    return {ours.index(theirs[int(pid)]): dict(state) for pid, state in opt_state.get("state", {}).items()}


__all__ = ["Converted", "convert", "reference_config", "reference_kind", "reference_optimizer_state",
           "reference_param_order"]

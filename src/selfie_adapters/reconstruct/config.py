"""A reconstructor's training config: the adapter trainer's YAML (model, data, projection = the head,
training, logging) plus a ``reconstructor`` section (how the model reads a label).

The data section is the adapters' (the same labels file and vectors); ``projection`` picks the head from
the adapter kinds registry (default ``full_rank``, NLA's ``Linear(d, d)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..adapters.kinds import PROJECTIONS
from ..errors import SelfieError
from ..training.config import DEFAULT_LOW_RANK_RANK, TrainConfig, apply_override, config_from_dict, read_yaml_config
from .reader import DEFAULT_PROMPT, POOLINGS, ReaderPrompt

SECTION = "reconstructor"
HEAD_DEFAULTS = {"type": "full_rank", "init_scale": 1.0}  # projection keys a reconstructor config leaves unset
TRAINING_DEFAULTS = {"learning_rate": 1e-2, "max_steps": 1000, "validation_every_n_steps": 100}  # toy: README


@dataclass
class ReconstructorSection:
    prompt: str = DEFAULT_PROMPT  # the label goes where {label} is
    chat: bool = True  # render with the chat template + generation prompt (as vectors/prompts.py)
    layer: int | None = None  # read the state after this block; None: the vectors' layer (labels file metadata)
    pooling: str = "mean"  # mean over the label's tokens (toy world: held-out fve 0.34 vs -0.15 for "last"), or last
    batch_size: int = 64  # labels per forward when caching their states

    def reader(self, layer: int) -> ReaderPrompt:
        return ReaderPrompt(layer=layer, prompt=self.prompt, chat=self.chat, pooling=self.pooling)


@dataclass
class ReconstructConfig(TrainConfig):
    """``TrainConfig`` + the ``reconstructor`` section; recorded whole in the file and the resumable state."""

    reconstructor: ReconstructorSection = field(default_factory=ReconstructorSection)

    @property
    def run_name(self) -> str:
        if self.experiment_name:
            return self.experiment_name
        stem = Path(self.data.labels_file).name.split(".")[0] or "run"
        return f"{stem}-reconstructor-{self.projection.type}-seed{self.seed}"


def reconstruct_config_from_dict(raw: dict[str, Any] | None, base_dir: str | os.PathLike = ".") -> ReconstructConfig:
    """Build and validate a reconstructor config from a nested dict (as read from YAML)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    section = raw.pop(SECTION, None) or {}
    if not isinstance(section, dict):
        raise SelfieError(f"config section {SECTION!r} must be a mapping, got {type(section).__name__}")
    valid = [f.name for f in fields(ReconstructorSection)]
    unknown = [k for k in section if k not in valid]
    if unknown:
        raise SelfieError(f"unknown config key {SECTION}.{unknown[0]!r}; valid keys in {SECTION}: {', '.join(valid)}")
    head = raw.setdefault("projection", {})
    for key, value in HEAD_DEFAULTS.items():
        head.setdefault(key, value)
    if head.get("type") in PROJECTIONS and PROJECTIONS[head["type"]].needs_rank:
        head.setdefault("low_rank_rank", DEFAULT_LOW_RANK_RANK)
    for key, value in TRAINING_DEFAULTS.items():
        raw.setdefault("training", {}).setdefault(key, value)
    logging = raw.setdefault("logging", {})
    if logging.get("log_sample_generations"):
        raise SelfieError("logging.log_sample_generations is for adapters; a reconstructor generates nothing (set 0)")
    logging["log_sample_generations"] = 0
    base = config_from_dict(raw, base_dir)
    rec = ReconstructorSection(**section)
    _check_section(rec)
    return ReconstructConfig(**{f.name: getattr(base, f.name) for f in fields(TrainConfig)}, reconstructor=rec)


def _check_section(rec: ReconstructorSection) -> None:
    if not isinstance(rec.prompt, str) or rec.prompt.count("{label}") != 1:
        raise SelfieError(f"reconstructor.prompt must contain '{{label}}' exactly once, got {rec.prompt!r}")
    if rec.pooling not in POOLINGS:
        raise SelfieError(f"reconstructor.pooling {rec.pooling!r} is not one of: {', '.join(POOLINGS)}")
    if rec.layer is not None and (not isinstance(rec.layer, int) or isinstance(rec.layer, bool) or rec.layer < 0):
        raise SelfieError(f"reconstructor.layer must be a block index >= 0 (or null: the vectors' layer), "
                          f"got {rec.layer!r}")
    if not isinstance(rec.chat, bool):
        raise SelfieError(f"reconstructor.chat must be true or false, got {rec.chat!r}")
    if not isinstance(rec.batch_size, int) or isinstance(rec.batch_size, bool) or rec.batch_size < 1:
        raise SelfieError(f"reconstructor.batch_size must be an integer >= 1, got {rec.batch_size!r}")


def load_reconstruct_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()
                            ) -> ReconstructConfig:
    """Read a YAML config (an adapter's works: the ``reconstructor`` section is optional), apply
    ``section.key=value`` overrides (``reconstructor.layer=18`` too), validate."""
    raw, base_dir = read_yaml_config(path)
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        if key.strip().startswith(f"{SECTION}."):
            parsed = yaml.safe_load(value) if value.strip() else None
            raw.setdefault(SECTION, {})[key.strip().split(".", 1)[1]] = parsed
        else:
            apply_override(raw, assignment)
    return reconstruct_config_from_dict(raw, base_dir)

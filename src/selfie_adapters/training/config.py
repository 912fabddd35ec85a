"""The training configuration: YAML sections ``model``, ``data``, ``projection``, ``soft_prompt``,
``training`` and ``logging`` with the reference trainer's field names and defaults.

An unknown key is an error that names it and lists the valid keys; ``--set section.key=value``
overrides a field (the value is parsed as YAML, so ``1e-3``, ``true`` and ``null`` work).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import SelfieError
from ..projections import PROJECTIONS
from ..template import INJECTION_TOKEN, SELFIE_TEMPLATE

OPTIMIZERS = ("adamw", "sgd_momentum")
SCHEDULERS = ("cosine", "linear", "constant")


@dataclass
class ModelConfig:
    name: str = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    device_map: str | None = "auto"  # for the frozen LM; ignored on CPU-only machines and under DDP
    dtype: str = "bfloat16"
    enable_gradient_checkpointing: bool = True
    load_in_8bit: bool = False


@dataclass
class DataConfig:
    labels_file: str = "labels.json"
    batch_size: int = 80  # the global batch (split across DDP ranks)
    shuffle: bool = True
    num_workers: int = 4  # accepted for old configs; the data lives in memory, no loader workers
    strip_labels: bool = False
    eos_token: str = "<|eot_id|>"
    train_dataset_ratios: dict[str, float] | list[dict] | None = None
    val_dataset_ratios: dict[str, float] | list[dict] | None = None
    resample_each_epoch: bool = True
    debug_dataset_mixing: bool = False
    # Our addition: where the vectors come from when the labels file has no `filename` (a tensor file,
    # `file.safetensors#key`, or `sae-lens:<release>/<sae_id>` for SAE decoder rows).
    vectors_file: str | None = None


@dataclass
class ProjectionConfig:
    type: str = "scalar_affine"
    normalize_input: bool = True
    init_scale: float = 30.0
    low_rank_rank: int | None = None
    low_rank_init_factor: float = 0.01


@dataclass
class SoftPromptConfig:
    template: str = SELFIE_TEMPLATE
    reserved_token: str = INJECTION_TOKEN


@dataclass
class TrainingConfig:
    learning_rate: float = 0.01
    scale_learning_rate: float | None = None
    bias_learning_rate: float | None = None
    optimizer_type: str = "adamw"
    weight_decay: float = 0.01
    momentum: float = 0.9
    num_epochs: int = 2
    max_steps: int | None = None  # exact number of optimizer steps when set (epochs repeat as needed)
    gradient_accumulation_steps: int = 1
    gradient_clip_norm: float | None = 0.5
    label_smoothing: float = 0.0
    max_loss: float | None = 100.0
    scheduler_type: str = "cosine"
    warmup_steps: int = 10
    validation_every_n_steps: int = 50
    val_fraction: float = 1.0
    checkpoint_every_n_steps: int = 100
    checkpoint_dir: str = "./checkpoints"
    save_final_checkpoint: bool = True
    resume_from_checkpoint: str | None = None


@dataclass
class LoggingConfig:
    use_wandb: bool = True
    wandb_project: str = "selfie-adapter-training"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None
    log_every_n_steps: int = 1
    log_sample_generations: int = 5
    log_generations_every_n_steps: int = 100
    log_singular_values_every_n_steps: int = 50
    use_mlflow: bool = False  # accepted for old configs, unused
    mlflow_tracking_uri: str | None = None
    mlflow_experiment_name: str | None = None


@dataclass
class TrainConfig:
    """The whole training configuration.

    >>> cfg = load_config("examples/goodfire-l19-scalar-affine.yaml", ["training.max_steps=10"])
    """

    seed: int = 42
    experiment_name: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    soft_prompt: SoftPromptConfig = field(default_factory=SoftPromptConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Folder that relative data paths are resolved against (the YAML file's folder); not a YAML key.
    base_dir: str = field(default=".", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the YAML keys (what goes into ``config_json``)."""
        d = asdict(self)
        d.pop("base_dir")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @property
    def run_name(self) -> str:
        if self.experiment_name:
            return self.experiment_name
        stem = Path(self.data.labels_file).name.split(".")[0] or "run"
        return f"{stem}-{self.projection.type}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.training.checkpoint_dir).expanduser() / self.run_name  # relative to the working dir

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


_SECTION_CLASSES = {"model": ModelConfig, "data": DataConfig, "projection": ProjectionConfig,
                    "soft_prompt": SoftPromptConfig, "training": TrainingConfig, "logging": LoggingConfig}
_TOP_KEYS = ("seed", "experiment_name")


def config_from_dict(raw: dict[str, Any] | None, base_dir: str | os.PathLike = ".") -> TrainConfig:
    """Build and validate a config from a nested dict (as read from YAML)."""
    raw = dict(raw or {})
    valid_top = list(_TOP_KEYS) + list(_SECTION_CLASSES)
    unknown = [k for k in raw if k not in valid_top]
    if unknown:
        raise SelfieError(f"unknown config key {unknown[0]!r} at the top level; valid keys: {', '.join(valid_top)}")
    sections = {}
    for name, cls in _SECTION_CLASSES.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise SelfieError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
        valid = [f.name for f in fields(cls)]
        for key in values:
            if key not in valid:
                raise SelfieError(f"unknown config key {name}.{key!r}; valid keys in {name}: {', '.join(valid)}")
        types = {f.name: str(f.type) for f in fields(cls)}
        sections[name] = cls(**{k: _coerce(f"{name}.{k}", types[k], v) for k, v in values.items()})
    cfg = TrainConfig(seed=raw.get("seed", 42), experiment_name=raw.get("experiment_name"),
                      base_dir=str(base_dir), **sections)
    validate(cfg)
    return cfg


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string: turn numeric strings into the field's number type."""
    if value is None or isinstance(value, bool) or annotation.startswith(("str", "dict")):
        return value
    try:
        if annotation.startswith("float") and isinstance(value, (int, str)):
            return float(value)
        if annotation.startswith("int") and isinstance(value, str):
            return int(value)
    except ValueError:
        raise SelfieError(f"{key} must be a number, got {value!r}") from None
    return value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``section.key=value`` (or ``seed=1``) to a raw config dict; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SelfieError(f"--set expects section.key=value, got {assignment!r} (e.g. --set training.max_steps=100)")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if len(parts) == 1:
        raw[parts[0]] = parsed
    elif len(parts) == 2:
        section = raw.setdefault(parts[0], {}) or {}
        if not isinstance(section, dict):
            raise SelfieError(f"--set {assignment!r}: {parts[0]!r} is not a config section")
        section[parts[1]] = parsed
        raw[parts[0]] = section
    else:
        raise SelfieError(f"--set expects section.key=value, got {assignment!r}")


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML training config, apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    base_dir = Path(".")
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise SelfieError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise SelfieError(f"{p.name} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise SelfieError(f"{p.name} must hold a mapping of config sections, got {type(raw).__name__}")
        base_dir = p.parent
    for assignment in overrides:
        apply_override(raw, assignment)
    return config_from_dict(raw, base_dir)


def validate(cfg: TrainConfig) -> None:
    """Value checks that would otherwise fail deep inside training."""
    t, p, d = cfg.training, cfg.projection, cfg.data
    if p.type not in PROJECTIONS or p.type == "identity":
        valid = [k for k in PROJECTIONS if k != "identity"]
        raise SelfieError(f"projection.type {p.type!r} is not trainable; valid: {', '.join(valid)}")
    if t.optimizer_type not in OPTIMIZERS:
        raise SelfieError(f"training.optimizer_type {t.optimizer_type!r}; valid: {', '.join(OPTIMIZERS)}")
    if t.scheduler_type not in SCHEDULERS:
        raise SelfieError(f"training.scheduler_type {t.scheduler_type!r}; valid: {', '.join(SCHEDULERS)}")
    positive = {"data.batch_size": d.batch_size, "training.gradient_accumulation_steps": t.gradient_accumulation_steps,
                "training.validation_every_n_steps": t.validation_every_n_steps,
                "training.checkpoint_every_n_steps": t.checkpoint_every_n_steps,
                "logging.log_every_n_steps": cfg.logging.log_every_n_steps}
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise SelfieError(f"{name} must be a positive integer, got {value!r}")
    if t.max_steps is not None and (not isinstance(t.max_steps, int) or t.max_steps < 1):
        raise SelfieError(f"training.max_steps must be a positive integer or null, got {t.max_steps!r}")
    if t.max_steps is None and (not isinstance(t.num_epochs, int) or t.num_epochs < 1):
        raise SelfieError(f"training.num_epochs must be a positive integer, got {t.num_epochs!r}")
    if not 0.0 < t.val_fraction <= 1.0:
        raise SelfieError(f"training.val_fraction must be in (0, 1], got {t.val_fraction}")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise SelfieError(f"training.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if t.max_loss is not None and t.max_loss <= 0:
        raise SelfieError(f"training.max_loss must be positive or null, got {t.max_loss}")
    if p.init_scale <= 0:
        raise SelfieError(f"projection.init_scale must be positive, got {p.init_scale}")


def replace(cfg: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """A copy with some fields changed, e.g. ``replace(cfg, training={"max_steps": 5})``."""
    raw = cfg.to_dict()
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return config_from_dict(raw, cfg.base_dir)


__all__ = ["DataConfig", "LoggingConfig", "ModelConfig", "ProjectionConfig", "SoftPromptConfig", "TrainConfig",
           "TrainingConfig", "apply_override", "config_from_dict", "load_config", "replace", "validate"]

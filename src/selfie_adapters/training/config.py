"""The training configuration: YAML sections ``model``, ``data``, ``projection``, ``soft_prompt``,
``training`` and ``logging`` with the reference trainer's field names and defaults.

An unknown key is an error that names it and lists the valid keys; ``--set section.key=value``
overrides a field (the value is parsed as YAML, so ``1e-3``, ``true`` and ``null`` work).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..adapters.kinds import INIT_FACTOR, trainable_kinds
from ..errors import SelfieError, first_line
from ..interpret.template import INJECTION_TOKEN
from ..models.loading import DTYPES

log = logging.getLogger(__name__)
OPTIMIZERS = ("adamw", "sgd_momentum")
SCHEDULERS = ("cosine", "linear", "constant")
AUTOCAST_DTYPES = ("bfloat16", "float16")
DEFAULT_LOW_RANK_RANK = 64  # projection.low_rank_rank left unset (the published SA+LR config's rank)


@dataclass
class ModelConfig:
    name: str = "meta-llama/Meta-Llama-3.1-8B-Instruct"
    device_map: str | None = "auto"  # for the frozen LM; ignored on CPU-only machines and under DDP
    # "auto": the checkpoint's own dtype (bf16 for Llama-3.1, fp32 for a dequantised GGUF), as the reference
    # loads it whatever this says, and as `selfie describe` loads the model
    dtype: str = "auto"
    # None: on when the frozen LM is on a GPU (memory), off on CPU, where it only costs a recomputed
    # forward and the shared prefix cache (about 2-3x slower steps)
    enable_gradient_checkpointing: bool | None = None
    load_in_8bit: bool = False


@dataclass
class DataConfig:
    labels_file: str = "labels.json"
    batch_size: int = 80  # the global batch (split across DDP ranks)
    shuffle: bool = True
    num_workers: int = 4  # accepted for old configs; the data lives in memory, no loader workers
    strip_labels: bool = False
    eos_token: str | None = None  # None: the model's end-of-turn token (Llama-3: <|eot_id|>, ChatML: <|im_end|>)
    train_dataset_ratios: dict[str, float] | list[dict] | None = None
    val_dataset_ratios: dict[str, float] | list[dict] | None = None
    resample_each_epoch: bool = True
    debug_dataset_mixing: bool = False
    # Our addition: where the vectors come from when the labels file has no `filename` (a tensor file,
    # `file.safetensors#key`, or `sae-lens:<release>/<sae_id>` for SAE decoder rows).
    vectors_file: str | None = None
    # Our addition: with question–answer pairs in the labels file, the share of them in each epoch
    # (0 < r < 1; the plain labels fill the rest). None: every example once per epoch.
    question_ratio: float | None = None


@dataclass
class ProjectionConfig:
    # The reference's default is scalar_affine; on a model whose hidden space is not aligned with its input
    # embeddings (SmolLM2-135M: scale falls, labels collapse) it does not learn, while the scalar affine map
    # plus a rank-64 term does (README "Named entities"). Set `type: scalar_affine` for the paper's adapter.
    type: str = "scalar_affine_plus_low_rank"
    normalize_input: bool = True
    init_scale: float | None = None  # None: the mean input-embedding norm of the model
    low_rank_rank: int | None = None  # None: DEFAULT_LOW_RANK_RANK for the low-rank kinds
    low_rank_init_factor: float = INIT_FACTOR


@dataclass
class SoftPromptConfig:
    # None: derived from the tokenizer (Llama-3: the published template; other chat models: the same
    # question/answer in their own chat template around an unused special token), see template.py
    template: str | None = None
    reserved_token: str | None = None


@dataclass
class TrainingConfig:
    learning_rate: float = 0.01
    scale_learning_rate: float | None = None
    # The reference gives this learning rate to parameters named `scale_direction` only; none of the
    # five adapter kinds has one (U, V and W take learning_rate there too), so it changes nothing.
    direction_learning_rate: float | None = None
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
    # Our addition: "bfloat16" or "float16" runs the frozen model's blocks under torch.autocast (the
    # adapter, the LM head and the loss stay fp32): about 2x faster on CPU for a small loss difference.
    autocast: str | None = None


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
    if unknown:  # the reference trainer ignores them too; keys inside a section stay strict
        log.warning("ignoring unknown top-level config key(s) %s; valid: %s", ", ".join(map(repr, unknown)),
                    ", ".join(valid_top))
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
    top = {f.name: str(f.type) for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: _coerce(k, top[k], raw[k]) for k in _TOP_KEYS if k in raw},
                      base_dir=str(base_dir), **sections)
    validate(cfg)
    if cfg.training.direction_learning_rate is not None:
        log.warning("training.direction_learning_rate applies to 'scale_direction' parameters (as in the "
                    "reference); no adapter kind has one, so it has no effect")
    return cfg


def _coerce(key: str, annotation: str, value: Any) -> Any:
    """Check ``value`` against the field's annotation (e.g. ``"float | None"``) and return it typed.

    YAML 1.1 reads ``1e-3`` as a string, so numeric strings become numbers; a bool is never a
    number; floats must be finite. Anything else is an error naming the key, the value and the type.
    """
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise SelfieError(f"{key} must be {_type_words(kinds)}, got null")
    for kind in kinds:
        typed = _as_kind(kind, value)
        if typed is not None:
            if isinstance(typed, float) and not math.isfinite(typed):
                raise SelfieError(f"{key} must be a finite number, got {value!r}")
            return typed
    raise SelfieError(f"{key} must be {_type_words(kinds)}, got {value!r} ({type(value).__name__})")


def _as_kind(kind: str, value: Any) -> Any:
    """``value`` as ``kind`` when it is one (or a numeric string of one); None when it is not."""
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "str":
        return value if isinstance(value, str) else None
    if kind in ("int", "float"):
        if isinstance(value, str):
            try:
                value = float(value) if kind == "float" else int(value.strip())
            except ValueError:
                return None
        if kind == "int":
            return value if isinstance(value, int) else None
        return float(value) if isinstance(value, (int, float)) else None
    container = dict if kind.startswith("dict") else list if kind.startswith("list") else None
    return value if container is not None and isinstance(value, container) else None


def _type_words(kinds: list[str]) -> str:
    words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
             "None": "null"}
    return " or ".join(words.get(k, "a mapping" if k.startswith("dict") else "a list") for k in kinds)


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
    if parts[0] not in (*_TOP_KEYS, *_SECTION_CLASSES):  # a typo on the command line is an error
        raise SelfieError(f"--set {assignment!r}: unknown key {parts[0]!r}; valid: "
                          f"{', '.join((*_TOP_KEYS, *_SECTION_CLASSES))}")
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


def read_yaml_config(path: str | os.PathLike | None) -> tuple[dict[str, Any], Path]:
    """A YAML config file's sections and its folder (relative paths in it are read from there); ``({}, .)``
    for None."""
    if path is None:
        return {}, Path(".")
    p = Path(path).expanduser()
    if not p.is_file():
        raise SelfieError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise SelfieError(f"{p.name} is not valid YAML: {first_line(e)}") from None
    if not isinstance(raw, dict):
        raise SelfieError(f"{p.name} must hold a mapping of config sections, got {type(raw).__name__}")
    return raw, p.parent


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML training config, apply ``section.key=value`` overrides, validate."""
    raw, base_dir = read_yaml_config(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return config_from_dict(raw, base_dir)


SEED_LIMIT = 2**63


def validate(cfg: TrainConfig) -> None:
    """Value checks (types are checked on reading) that would otherwise fail deep inside training."""
    t, p, d, lg = cfg.training, cfg.projection, cfg.data, cfg.logging
    _check_choices(cfg)
    _check_ranges({  # name: (value, lowest allowed, exclusive?, highest allowed or None)
        "seed": (cfg.seed, 0, False, SEED_LIMIT - 1),
        "data.batch_size": (d.batch_size, 1, False, None),
        "training.gradient_accumulation_steps": (t.gradient_accumulation_steps, 1, False, None),
        "training.validation_every_n_steps": (t.validation_every_n_steps, 1, False, None),
        "training.checkpoint_every_n_steps": (t.checkpoint_every_n_steps, 1, False, None),
        "training.num_epochs": (t.num_epochs, 1, False, None),
        "training.max_steps": (t.max_steps, 1, False, None),
        "training.warmup_steps": (t.warmup_steps, 0, False, None),
        "training.learning_rate": (t.learning_rate, 0.0, True, None),
        "training.scale_learning_rate": (t.scale_learning_rate, 0.0, True, None),
        "training.bias_learning_rate": (t.bias_learning_rate, 0.0, True, None),
        "training.direction_learning_rate": (t.direction_learning_rate, 0.0, True, None),
        "training.weight_decay": (t.weight_decay, 0.0, False, None),
        "training.momentum": (t.momentum, 0.0, False, 1.0),
        "training.gradient_clip_norm": (t.gradient_clip_norm, 0.0, True, None),
        "training.max_loss": (t.max_loss, 0.0, True, None),
        "training.val_fraction": (t.val_fraction, 0.0, True, 1.0),
        "training.label_smoothing": (t.label_smoothing, 0.0, False, None),
        "projection.init_scale": (p.init_scale, 0.0, True, None),
        "projection.low_rank_rank": (p.low_rank_rank, 1, False, None),
        "projection.low_rank_init_factor": (p.low_rank_init_factor, 0.0, False, None),
        "logging.log_every_n_steps": (lg.log_every_n_steps, 1, False, None),
        "logging.log_sample_generations": (lg.log_sample_generations, 0, False, None),
        "logging.log_generations_every_n_steps": (lg.log_generations_every_n_steps, 1, False, None),
        "logging.log_singular_values_every_n_steps": (lg.log_singular_values_every_n_steps, 0, False, None),
    })
    if t.label_smoothing >= 1.0:
        raise SelfieError(f"training.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    if d.question_ratio is not None and not 0.0 < d.question_ratio < 1.0:
        raise SelfieError(f"data.question_ratio must be between 0 and 1 (exclusive), got {d.question_ratio}; "
                          "null mixes every example once per epoch")
    if d.question_ratio is not None and d.train_dataset_ratios is not None:
        raise SelfieError("data.question_ratio and data.train_dataset_ratios cannot be combined yet; set one "
                          "of them to null")
    _check_paths(cfg)


def _check_choices(cfg: TrainConfig) -> None:
    t, p = cfg.training, cfg.projection
    trainable = trainable_kinds()
    if p.type == "identity":
        raise SelfieError(f"projection.type 'identity' is not trainable; valid: {', '.join(trainable)}")
    for name, value, valid in (("projection.type", p.type, trainable),
                               ("training.optimizer_type", t.optimizer_type, OPTIMIZERS),
                               ("training.scheduler_type", t.scheduler_type, SCHEDULERS),
                               ("model.dtype", cfg.model.dtype, DTYPES),
                               ("training.autocast", t.autocast, (None, *AUTOCAST_DTYPES))):
        if value not in valid:
            raise SelfieError(f"{name} {value!r} is not one of: {', '.join(map(str, valid))}")
    sp = cfg.soft_prompt  # template None: derived from the model's tokenizer at training time
    token = sp.reserved_token or INJECTION_TOKEN
    if sp.template is not None and token not in sp.template:
        raise SelfieError(f"soft_prompt.template does not contain soft_prompt.reserved_token {token!r}")


def _check_ranges(checks: dict[str, tuple]) -> None:
    for name, (value, low, exclusive, high) in checks.items():
        if value is None:
            continue
        if value < low or (exclusive and value == low) or (high is not None and value > high):
            bound = f"{'>' if exclusive else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise SelfieError(f"{name} must be {bound}, got {value!r}")


def _check_paths(cfg: TrainConfig) -> None:
    """The run folder must be a folder inside checkpoint_dir (experiment_name is one plain name)."""
    name = cfg.experiment_name
    if name is not None and (name in ("", ".", "..") or any(c in name for c in "/\\\0")):
        raise SelfieError(f"experiment_name must be a plain folder name (no '/', '\\', '..'), got {name!r}; "
                          "put the parent folder in training.checkpoint_dir")
    ckpt = Path(cfg.training.checkpoint_dir).expanduser()
    if ckpt.exists() and not ckpt.is_dir():
        raise SelfieError(f"training.checkpoint_dir {str(ckpt)!r} is a file, not a folder")
    if cfg.run_dir.exists() and not cfg.run_dir.is_dir():
        raise SelfieError(f"the run folder {str(cfg.run_dir)!r} is a file, not a folder")


def replace(cfg: TrainConfig, **sections: dict[str, Any]) -> TrainConfig:
    """A copy with some fields changed, e.g. ``replace(cfg, training={"max_steps": 5})``."""
    raw = cfg.to_dict()
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return config_from_dict(raw, cfg.base_dir)


__all__ = ["DEFAULT_LOW_RANK_RANK", "DataConfig", "LoggingConfig", "ModelConfig", "ProjectionConfig",
           "SoftPromptConfig", "TrainConfig", "TrainingConfig", "apply_override", "config_from_dict", "load_config",
           "replace", "validate"]

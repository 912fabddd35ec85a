"""Training SelfIE adapters: config, data, loss, trainer (and DDP helpers)."""

from .config import TrainConfig, config_from_dict, load_config
from .data import LabelledData, load_training_data, tokenize_targets
from .evaluate import adapter_loss, evaluate_loss
from .loss import SelfieLoss, token_cross_entropy
from .trainer import TrainResult, train

__all__ = ["LabelledData", "SelfieLoss", "TrainConfig", "TrainResult", "adapter_loss", "config_from_dict",
           "evaluate_loss", "load_config", "load_training_data", "tokenize_targets", "token_cross_entropy", "train"]

"""Loss of an adapter (or of the untrained baseline at given scales) on a labelled split."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from ..adapters.artifact import Adapter
from ..adapters.guard import check_model
from ..errors import SelfieError
from ..interpret.template import resolve_template
from ..models.tree import model_device
from . import ddp
from .config import DataConfig, SoftPromptConfig
from .data import LabelledData, Split, load_training_data
from .loss import SelfieLoss
from .question_loss import QuestionLoss
from .sampling import validation_subset


def evaluate_loss(loss_fn: QuestionLoss | SelfieLoss, soft_fn, data: LabelledData, split: Split, batch_size: int,
                  dist: ddp.DistInfo | None = None) -> float:
    """Validation loss: mean over batches of the batch-mean loss (the reference implementation's)."""
    dist = dist or ddp.DistInfo()
    if len(split) == 0:
        raise SelfieError("no examples to evaluate in this split")
    batch_means = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            idx = dist.shard(torch.arange(start, min(start + batch_size, len(split))))
            total = torch.zeros(1)
            if len(idx):
                args = (soft_fn(data.vectors[split.rows[idx]]), split.targets[idx], split.lengths[idx])
                per = loss_fn(*args) if split.prompts is None else loss_fn(*args, split.prompts[idx])
                total = per.sum().float().cpu().reshape(1)
            ddp.all_reduce_sum([total], dist)
            batch_means.append(total.item() / min(batch_size, len(split) - start))
    return sum(batch_means) / len(batch_means)


def adapter_loss(model, tokenizer, adapter: Adapter | None, labels_file: str, *, vectors_file: str | None = None,
                 split: str = "val", batch_size: int | None = None, scales: Sequence[float] = (1.0,),
                 strip_labels: bool | None = None, allow_model_mismatch: bool = False,
                 val_fraction: float | None = None, seed: int | None = None) -> list[dict]:
    """The published val loss of ``adapter`` (None → identity with L2 normalisation, the untrained
    baseline) at each scale: soft token = adapter(scale · x/‖x‖), as in the reference's evals.
    Template, eos and label stripping come from the adapter's training config when it has one; so
    do ``val_fraction`` and ``seed`` of the validation subset (the reference's: ``int(n·f)`` sorted
    indices from ``RandomState(seed)``), so a published adapter is scored on the examples its published
    val loss was measured on; and ``batch_size`` (None: the adapter's ``data.batch_size``, else 80) — the
    loss is a mean over batches, so another batch size weighs a short last batch differently and the
    number no longer equals the trainer's. An adapter for another model is refused (``check_model``) unless
    ``allow_model_mismatch``.

    >>> adapter_loss(model, tok, None, "labels.json.gz", vectors_file="w_dec.pt", scales=[2.5, 10])
    [{'scale': 2.5, 'loss': ..., 'num_examples': 4541, 'split': 'val'}, ...]
    """
    dim = model.config.hidden_size
    if adapter is not None:
        check_model(adapter, model, allow_model_mismatch)
    trained = _training_config(adapter)
    batch_size = batch_size or _positive_int(trained.get("data", {}).get("batch_size")) or 80
    data_cfg = DataConfig(labels_file=labels_file, vectors_file=vectors_file, batch_size=batch_size,
                          **{k: v for k, v in trained.get("data", {}).items() if k in ("eos_token", "strip_labels")})
    if strip_labels is not None:
        data_cfg.strip_labels = strip_labels
    sp = SoftPromptConfig(**{k: v for k, v in trained.get("soft_prompt", {}).items()
                             if k in ("template", "reserved_token")})
    data = load_training_data(data_cfg, tokenizer, dim)
    part = data.split(split)
    if len(part) == 0:
        raise SelfieError(f"{labels_file} has no examples with split {split!r}; try --split train")
    if split == "val":
        part = _published_subset(part, data, trained, val_fraction, seed)
    adapter = adapter if adapter is not None else Adapter.identity(dim, normalize_input=True)
    adapter.to(model_device(model))
    loss_fn = QuestionLoss(model, tokenizer, resolve_template(tokenizer, sp.template, sp.reserved_token),
                           data.questions)
    out = []
    for scale in scales:
        def soft(v: torch.Tensor, s: float = float(scale)) -> torch.Tensor:
            return adapter.scaled_transform(v, s)

        loss = evaluate_loss(loss_fn, soft, data, part, batch_size)
        out.append({"scale": float(scale), "loss": loss, "num_examples": len(part), "split": split})
    return out


def _published_subset(part: Split, data: LabelledData, trained: dict, val_fraction: float | None,
                      seed: int | None) -> Split:
    """The reference trainer's validation subset, with the adapter's own val_fraction and seed by default."""
    fraction = val_fraction if val_fraction is not None else (trained.get("training") or {}).get("val_fraction")
    fraction = 1.0 if fraction is None else float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise SelfieError(f"val_fraction must be in (0, 1], got {fraction}")
    seed = seed if seed is not None else int(trained.get("seed", 42))
    return validation_subset(part, data.datasets, None, fraction, seed)


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _training_config(adapter: Adapter | None) -> dict:
    if adapter is None or "config_json" not in adapter.metadata:
        return {}
    try:
        cfg = json.loads(adapter.metadata["config_json"])
    except json.JSONDecodeError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


__all__ = ["adapter_loss", "evaluate_loss"]

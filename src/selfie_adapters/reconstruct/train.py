"""Train a reconstructor on the adapter trainer's loop (``training/trainer.py``: schedule, step, clip,
log, eval, checkpoint, exact resume): only what is trained differs — a head from the adapter kinds
registry, its loss (mse_nrm) and its file (``Reconstructor``).

The frozen LM reads every distinct label once, before the first step (no gradient flows through it),
so a step is one small matrix product: training the head costs little next to reading the labels.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch

from ..adapters.guard import model_signature
from ..adapters.kinds import Projection
from ..errors import SelfieError
from ..models.tree import check_layers, model_device
from ..training.data import Split
from ..training.trainer import Progress, TrainResult, _Run, run_training
from .artifact import Reconstructor
from .config import ReconstructConfig
from .reader import ReaderPrompt, read_states
from .scores import baseline_stats, per_example_mse_nrm

log = logging.getLogger(__name__)


def train_reconstructor(cfg: ReconstructConfig, *, model=None, tokenizer=None, resume: bool = False,
                        overwrite: bool = False, stop_at_step: int | None = None,
                        progress: Progress | None = None) -> TrainResult:
    """Train a reconstructor as ``cfg`` says (same arguments and guarantees as ``training.train``);
    ``best``/``final`` are reconstructor files, the validation loss is mse_nrm on the val split.

    >>> result = train_reconstructor(load_reconstruct_config("examples/entities.yaml"))
    >>> load_reconstructor(result.final_path)
    """
    return run_training(cfg, ReconstructorRun, model=model, tokenizer=tokenizer, resume=resume,
                        overwrite=overwrite, stop_at_step=stop_at_step, progress=progress)


def data_layer(datasets: list[str]) -> int | None:
    """The one layer named by the labels file's datasets (``name@lN``), or None."""
    layers = {int(m.group(1)) for d in datasets if (m := re.search(r"@l(\d+)$", d))}
    return layers.pop() if len(layers) == 1 and all("@l" in d for d in datasets) else None


class ReconstructorRun(_Run):
    """The trainer's run with a reconstructor's head, loss and file."""

    cfg: ReconstructConfig

    def _build_projection(self, dim: int) -> Projection:
        rc = self.cfg.reconstructor
        layer = rc.layer if rc.layer is not None else data_layer(self.data.datasets)
        if layer is None:
            raise SelfieError(f"the labels file does not name one layer for its vectors (datasets "
                              f"{self.data.datasets}); set reconstructor.layer (--set reconstructor.layer=L)")
        check_layers(self.model, [layer], "reconstructor.layer")
        self.reader: ReaderPrompt = rc.reader(layer)
        return super()._build_projection(dim)

    def _setup_loss(self) -> None:
        """Read every distinct label once (frozen LM, no gradient); μ and Var of the training targets."""
        t0 = time.perf_counter()
        labels = list(dict.fromkeys(self.data.train.labels + (self.val.labels if self.val is not None else [])))
        self.label_row = {lab: i for i, lab in enumerate(labels)}
        self.states = read_states(self.model, self.tokenizer, labels, self.reader,
                                  batch_size=self.cfg.reconstructor.batch_size).to(model_device(self.model))
        self.read_seconds = time.perf_counter() - t0
        self.target_mean, self.baseline_var = baseline_stats(self.data.vectors[self.data.train.rows])
        log.info("read %d labels in %.1f s; baseline Var %.4f", len(labels), self.read_seconds, self.baseline_var)

    def _per_example_loss(self, split: Split, idx: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([self.label_row[split.labels[i]] for i in idx.tolist()], device=self.states.device)
        pred = self.projection(self.states[rows])  # (b, d)
        target = self.data.vectors[split.rows[idx]].to(pred.device)  # (b, d)
        return per_example_mse_nrm(pred, target)  # (b,)

    def _validation_loss(self) -> float:
        """Mean mse_nrm over the validation examples."""
        with torch.no_grad():
            idx = torch.arange(len(self.val))
            return float(torch.cat([self._per_example_loss(self.val, chunk) for chunk in idx.split(4096)]).mean())

    def _save_model(self, path: Path, step: int) -> Path:
        meta = {"model_name": self.cfg.model.name, "config_json": self.cfg.to_json(),
                "model_signature": json.dumps(model_signature(self.model)), "global_step": str(step),
                "read_seconds": f"{self.read_seconds:.3f}"}
        if self.best_val_loss is not None:
            meta["best_val_loss"] = repr(float(self.best_val_loss))
            meta["best_val_fve_nrm"] = repr(1.0 - float(self.best_val_loss) / self.baseline_var)
        rec = Reconstructor(self.projection, self.reader, self.target_mean, self.baseline_var, meta)
        path = rec.save(path)
        self.projection.train()  # Reconstructor() put the live head in eval mode
        return path

    def _sample_descriptions(self) -> list[dict]:
        return []

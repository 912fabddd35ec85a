"""From a ``--reconstructor`` flag to a ``Reconstructor``: a file, or ``roundtrip`` (the zero-training
round trip, which needs the mean vectors the vectors were made contrastive with)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..adapters.guard import model_signature
from ..errors import SelfieError
from ..files import resolve_file
from ..runs.fingerprint import FileInput
from ..vectors.tensor_files import load_mean_vectors
from .artifact import Reconstructor, load_reconstructor

ROUNDTRIP = "roundtrip"


@dataclass(frozen=True)
class ReconstructorChoice:
    """``spec`` (a reconstructor file / hub reference, or ``roundtrip``) with what ``roundtrip`` needs."""

    spec: str
    mean_vectors: str | os.PathLike | None = None
    layer: int | None = None
    chat: bool = True

    def check(self) -> Reconstructor | None:
        """Before any model loads: the file loads (strictly), or roundtrip has its mean vectors and layer.
        Returns the loaded file's reconstructor (None for roundtrip, built later from the targets)."""
        if self.spec != ROUNDTRIP:
            return load_reconstructor(self.spec)
        if self.mean_vectors is None:
            raise SelfieError("--reconstructor roundtrip needs --mean-vectors FILE (the mean the vectors were made "
                              "contrastive with) and the vectors' --layer")
        self.mean()
        return None

    def mean(self) -> tuple[int, torch.Tensor]:
        means = load_mean_vectors(self.mean_vectors, self.layer)
        layer = self.layer if self.layer is not None else (next(iter(means)) if len(means) == 1 else None)
        if layer is None:
            raise SelfieError(f"{self.mean_vectors} holds layers {sorted(means)}; choose one with --layer")
        if layer not in means:
            raise SelfieError(f"{self.mean_vectors} has no layer_{layer}; it holds layers {sorted(means)}")
        return layer, means[layer]

    def build(self, targets: torch.Tensor, model=None, loaded: Reconstructor | None = None) -> Reconstructor:
        """The reconstructor; for roundtrip μ and Var come from ``targets`` (the vectors being scored), and
        it belongs to ``model`` (the model that reads the labels is the one the vectors came from)."""
        if self.spec != ROUNDTRIP:
            return loaded if loaded is not None else load_reconstructor(self.spec)
        layer, mean = self.mean()
        rec = Reconstructor.roundtrip(mean, layer, targets, chat=self.chat)
        if model is not None:
            rec.metadata["model_signature"] = json.dumps(model_signature(model))
        return rec

    def record(self) -> dict:
        """What the output's settings record: the file by content, or roundtrip with its mean file and layer."""
        if self.spec != ROUNDTRIP:
            return {"reconstructor": FileInput(resolve_file(self.spec))}
        return {"reconstructor": ROUNDTRIP, "reconstructor_mean": FileInput(self.mean_vectors),
                "reconstructor_layer": self.layer}

"""A reconstructor = how the model reads a label (``ReaderPrompt``) + a head from the adapter kinds
registry + the training targets' baseline (μ, Var); its single-file format.

The file is the adapters' format (one ``.safetensors``, string metadata, ``config_json``) with
``selfie_artifact: reconstructor`` in the metadata, so an adapter loader refuses it and
``load_reconstructor`` refuses an adapter, each with a one-line error. Tensors: the head's (named as
in an adapter file), ``target_mean`` (μ, (d,)) and, for the zero-training round trip, ``input_mean``
(the mean vector the vectors were made contrastive with, subtracted from the read state).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..adapters.artifact import build_from_state, flat_metadata, projection_config
from ..adapters.kinds import Projection, build_projection
from ..errors import SelfieError
from ..files import check_finite, read_safetensors, resolve_file, save_tensors
from .reader import ReaderPrompt
from .scores import baseline_stats

ARTIFACT_KEY = "selfie_artifact"  # metadata key telling a reconstructor file from an adapter file
RECONSTRUCTOR = "reconstructor"
OWN_TENSORS = ("target_mean", "input_mean")


class Reconstructor:
    """Text → vector: ``head(state(label) − input_mean)``, compared with the vector after normalisation.

    >>> rec = load_reconstructor("run/final.safetensors")
    >>> rec.reader.layer, rec.kind
    (18, 'full_rank')
    """

    def __init__(self, head: Projection, reader: ReaderPrompt, target_mean: torch.Tensor, baseline_var: float,
                 metadata: dict[str, str] | None = None, input_mean: torch.Tensor | None = None) -> None:
        d = head.dim
        for name, t in (("target_mean", target_mean), ("input_mean", input_mean)):
            if t is not None and tuple(t.shape) != (d,):
                raise SelfieError(f"reconstructor {name} has shape {tuple(t.shape)}, expected ({d},)")
        self.head, self.reader = head.eval(), reader
        self.target_mean = target_mean.float()
        self.input_mean = None if input_mean is None else input_mean.float()
        self.baseline_var = float(baseline_var)
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("model_name", "")

    @classmethod
    def roundtrip(cls, mean: torch.Tensor, layer: int, targets: torch.Tensor, *, model_name: str = "",
                  prompt: str | None = None, chat: bool = True) -> Reconstructor:
        """The zero-training round trip for contrastive vectors: the state of the extraction prompt at the
        vectors' layer minus the same mean; μ and Var come from ``targets`` (the vectors being scored)."""
        head = build_projection("identity", mean.shape[-1], normalize_input=False)
        reader = ReaderPrompt(layer=layer, chat=chat, **({"prompt": prompt} if prompt else {}))
        mu, var = baseline_stats(targets)
        return cls(head, reader, mu, var, {"model_name": model_name, "roundtrip": "true"}, input_mean=mean)

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def dim(self) -> int:
        return self.head.dim

    @property
    def model_name(self) -> str:
        return self.metadata.get("model_name", "")

    def predict(self, states: torch.Tensor) -> torch.Tensor:
        """(N, d) read states → (N, d) fp32 predicted vectors (not normalised)."""
        x = states.float()
        if self.input_mean is not None:
            x = x - self.input_mean.to(x.device)
        with torch.no_grad():
            return self.head(x).float()

    def summary(self) -> dict:
        """What `selfie inspect` shows: kind, model, dimension, reader, baseline, training facts."""
        info = {"artifact": RECONSTRUCTOR, "projection_type": self.kind, "model_name": self.model_name,
                "model_dim": self.dim, "num_parameters": sum(p.numel() for p in self.head.parameters()),
                "layer": self.reader.layer, "prompt": self.reader.prompt, "chat": self.reader.chat,
                "pooling": self.reader.pooling, "baseline_var": self.baseline_var,
                "subtracts_input_mean": self.input_mean is not None}
        skip = {*info, "config_json", ARTIFACT_KEY, "chat_reader"}
        info.update({k: v for k, v in self.metadata.items() if k not in skip})
        if "config_json" in self.metadata:
            info["config"] = json.loads(self.metadata["config_json"])
        return info

    def save(self, path: str | os.PathLike, **extra_metadata: str) -> Path:
        """Write the single-file format (atomically); ``load_reconstructor`` reads it back identically."""
        meta = {**self.metadata, **{k: str(v) for k, v in extra_metadata.items()}, **flat_metadata(self.head)}
        meta.setdefault("config_json", json.dumps({"projection": projection_config(self.head)}))
        meta.update({ARTIFACT_KEY: RECONSTRUCTOR, "layer": str(self.reader.layer), "prompt": self.reader.prompt,
                     "chat_reader": str(self.reader.chat).lower(), "pooling": self.reader.pooling,
                     "baseline_var": repr(self.baseline_var)})
        tensors = {**self.head.state_dict(), "target_mean": self.target_mean}
        if self.input_mean is not None:
            tensors["input_mean"] = self.input_mean
        return save_tensors(tensors, path, meta)

    def __repr__(self) -> str:
        return (f"Reconstructor({self.kind}, d={self.dim}, layer={self.reader.layer}, pooling={self.reader.pooling}, "
                f"model={self.model_name!r})")


def is_reconstructor_file(source: str | os.PathLike) -> bool:
    """Whether ``source`` (a local file or hub reference) is a reconstructor (reads only the header)."""
    path = resolve_file(source)
    if path.suffix != ".safetensors":
        return False
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(ARTIFACT_KEY) == RECONSTRUCTOR
    except (SafetensorError, OSError):
        return False


def load_reconstructor(source: str | os.PathLike, device: torch.device | str | None = None) -> Reconstructor:
    """Load a reconstructor file (strict: names, shapes, finite values); an adapter file is refused."""
    path = resolve_file(source)
    state, meta = read_safetensors(path)
    if meta.get(ARTIFACT_KEY) != RECONSTRUCTOR:
        raise SelfieError(f"{path.name} is not a reconstructor (no '{ARTIFACT_KEY}: {RECONSTRUCTOR}' in its "
                          "metadata; an adapter file?); pass it with --adapter, or train a reconstructor with "
                          "`selfie train-reconstructor`")
    if "target_mean" not in state:
        raise SelfieError(f"{path.name}: a reconstructor needs tensor 'target_mean'; the file is damaged")
    own = {k: state.pop(k) for k in OWN_TENSORS if k in state}
    for name, t in own.items():
        check_finite(t, f"{path.name}: tensor {name!r}")
    head = build_from_state(state, {k: v for k, v in meta.items() if k != ARTIFACT_KEY}, path.name).projection
    try:
        reader = ReaderPrompt(layer=int(meta["layer"]), prompt=meta.get("prompt", "{label}"),
                              chat=meta.get("chat_reader", "true") == "true", pooling=meta.get("pooling", "last"))
        var = float(meta["baseline_var"])
    except (KeyError, ValueError) as e:
        raise SelfieError(f"{path.name}: reconstructor metadata layer/baseline_var missing or bad ({e})") from None
    rec = Reconstructor(head, reader, own["target_mean"], var, meta, own.get("input_mean"))
    if device is not None:
        rec.head.to(device)
    return rec

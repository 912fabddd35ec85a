"""Is this model the one the adapter was trained for?

Adapters give fluent garbage on other models even when the shapes match, so: a dimension
mismatch is always refused; a different model is refused unless the caller opts in. A local copy
of the right model passes because we compare configurations, not path strings.
"""

from __future__ import annotations

import json
import warnings

from ..errors import SelfieError
from ..models.tokens import config_eos_ids

# Configuration fingerprints of models with published adapters. The eos list tells the Instruct
# model from the base model (same shapes otherwise).
KNOWN_MODELS: dict[str, dict] = {
    "meta-llama/Meta-Llama-3.1-8B-Instruct": {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32,
        "vocab_size": 128256, "eos_token_id": [128001, 128008, 128009]},
}
KNOWN_MODELS["meta-llama/Llama-3.1-8B-Instruct"] = KNOWN_MODELS["meta-llama/Meta-Llama-3.1-8B-Instruct"]
SIGNATURE_KEYS = ("architectures", "hidden_size", "num_hidden_layers", "vocab_size")


def model_signature(model) -> dict:
    """The fields of a model's config that identify it (stored in adapters we train)."""
    cfg = model.config
    return {k: getattr(cfg, k, None) for k in SIGNATURE_KEYS}


def check_model(adapter, model, allow_model_mismatch: bool = False, what: str = "adapter") -> None:
    """Raise SelfieError if ``adapter`` (or a reconstructor: ``what``) does not belong to ``model``
    (see module docstring)."""
    hidden = model.config.hidden_size
    if adapter.dim != hidden:
        raise SelfieError(f"{what} expects d={adapter.dim} but the model's hidden size is {hidden}; "
                          f"use {'an' if what[0] in 'aeiou' else 'a'} {what} trained for this model "
                          f"({what} model: {adapter.model_name!r})")
    problem = _mismatch(adapter, model, what)
    if problem is None:
        return
    if allow_model_mismatch:
        warnings.warn(f"model mismatch allowed: {problem}", stacklevel=2)
        return
    raise SelfieError(f"{problem}; descriptions would be meaningless. Load the adapter's model, or pass "
                      "allow_model_mismatch=True (CLI: --allow-model-mismatch) if you know better")


def _mismatch(adapter, model, what: str = "adapter") -> str | None:
    expected_name = adapter.model_name
    name = getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "")
    expected = _expected_signature(adapter)
    if expected is None:
        if not expected_name or _same_name(name, expected_name):
            return None
        return f"{what} was trained on {expected_name!r} but the model is {name!r}"
    got = model_signature(model)
    if "eos_token_id" in expected:
        got["eos_token_id"] = config_eos_ids(model)
    # A field one side does not record proves nothing: a GGUF read by transformers has no
    # `architectures`, the same model saved by the GGUF cache (save_pretrained) has one.
    diffs = [f"{k}={got.get(k)!r} (expected {v!r})" for k, v in expected.items()
             if v is not None and got.get(k) is not None and _norm(got.get(k)) != _norm(v)]
    if diffs:
        return f"the model is not {expected_name or f'the {what} model'!r}: " + ", ".join(diffs)
    return None


def _expected_signature(adapter) -> dict | None:
    if "model_signature" in adapter.metadata:
        try:
            return json.loads(adapter.metadata["model_signature"])
        except json.JSONDecodeError:
            return None
    return KNOWN_MODELS.get(adapter.model_name)


def _norm(v):
    return sorted(v) if isinstance(v, list) and all(isinstance(x, int) for x in v) else v


def _same_name(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/") or a.rstrip("/").split("/")[-1] == b.rstrip("/").split("/")[-1]

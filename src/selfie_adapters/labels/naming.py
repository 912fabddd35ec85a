"""What exported labels are named by — model, layer, adapter — read from the record beside the rows.

`selfie describe` writes ``OUT.settings.json`` beside its rows: the inputs (model identity, vectors
file and key, SAE, prompt layer, adapter hash) and, under ``about``, the model and adapter as the user
named them. ``export_settings`` turns that into Neuronpedia's ``modelId`` / ``layer`` (source id) /
``explanationModelName`` and delphi's module name; a flag overrides any of them, and a field that
neither gives is *invented* (a placeholder) and said so, never silently taken from another model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..runs.outputs import Record, read_record

EXPORT_FIELDS = ("model_id", "source", "explanation_model", "module")
FLAGS = {"model_id": "--model-id", "source": "--source", "explanation_model": "--explanation-model",
         "module": "--module"}
PLACEHOLDERS = {"model_id": "unknown-model", "source": "unknown-layer", "explanation_model": "selfie-adapter",
                "module": "layers.unknown"}
# Neuronpedia's model ids of models with published adapters (others: the model's own short name)
NEURONPEDIA_MODEL_IDS = {"meta-llama/llama-3.1-8b-instruct": "llama3.1-8b-it",
                         "meta-llama/meta-llama-3.1-8b-instruct": "llama3.1-8b-it",
                         "llama-3.1-8b-instruct": "llama3.1-8b-it"}


@dataclass(frozen=True)
class ExportSettings:
    """The four names of an export, and why each field that had to be invented was (field → reason)."""

    values: dict[str, str]
    invented: dict[str, str] = field(default_factory=dict)

    def invented_lines(self, fields=EXPORT_FIELDS) -> list[str]:
        """One line per invented field among ``fields``, naming the placeholder and the flag that sets it."""
        return [f"note: {name} {self.values[name]!r} is a placeholder ({why}); set it with {FLAGS[name]}"
                for name, why in self.invented.items() if name in fields]


def export_settings(rows_path: str | os.PathLike, overrides: dict[str, str] | None = None) -> ExportSettings:
    """The names for exporting ``rows_path`` (`selfie describe` rows): ``overrides`` (flags), else what its
    settings record says, else a placeholder listed in ``invented``.

    >>> export_settings("labels.jsonl").values["model_id"]   # rows of --model smollm2-135m-instruct
    'smollm2-135m-instruct'
    """
    rows_path = Path(rows_path)
    record = Record(rows_path, "describe")
    data = read_record(record.path) if record.path.is_file() else None
    inputs = data.get("inputs") if isinstance(data, dict) and data.get("selfie") == "describe" else None
    if not isinstance(inputs, dict):
        found, missing = {}, f"no settings record {record.path.name} beside the rows"
    else:
        about = data.get("about") if isinstance(data.get("about"), dict) else {}
        found, missing = recorded_names(inputs, about), "the settings record does not say"
    values, invented = {}, {}
    for name in EXPORT_FIELDS:
        value = (overrides or {}).get(name) or found.get(name)
        if value is None:
            value, invented[name] = PLACEHOLDERS[name], missing
        values[name] = value
    return ExportSettings(values, invented)


def recorded_names(inputs: dict, about: dict) -> dict[str, str]:
    """The export names a settings record gives (absent where it does not say)."""
    names: dict[str, str] = {}
    model = about.get("model") or (inputs.get("model") or {}).get("hub_id")
    if isinstance(model, str) and model:
        names["model_id"] = neuronpedia_model_id(model)
    layer, sae = source_layer(inputs)
    if layer is not None:
        goodfire = sae is not None and sae.lower().startswith("goodfire")
        names["source"] = f"{layer}-resid-post" + ("-gf" if goodfire else "")
        names["module"] = f"layers.{layer}"
    if "adapter" in inputs and inputs["adapter"] is None:
        names["explanation_model"] = "selfie-untrained"
    elif isinstance(about.get("adapter"), str):  # the adapter's file name, e.g. goodfire-sae-scalar-affine
        names["explanation_model"] = Path(about["adapter"]).name.split(".")[0]
    return names


def neuronpedia_model_id(model: str) -> str:
    """Neuronpedia's id for a model named as ``--model`` was: ``llama3.1-8b-it`` for Llama-3.1-8B-Instruct,
    else the short name (a catalogue name, a hub id's repo name or a folder's / GGUF file's name), lower case.

    >>> neuronpedia_model_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    'smollm2-135m-instruct'
    """
    key = model.strip().rstrip("/").lower()
    if key in NEURONPEDIA_MODEL_IDS:
        return NEURONPEDIA_MODEL_IDS[key]
    name = key.rsplit("/", 1)[-1]
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def source_layer(inputs: dict) -> tuple[int | None, str | None]:
    """(the layer the described vectors were read at, the SAE release if any), from recorded inputs: the SAE
    id (``layer_19``), ``--layer`` of ``--prompts``, or a ``layer_{L}`` tensor key; (None, …) when none says."""
    sae = inputs.get("sae")
    if isinstance(sae, str) and "/" in sae:
        release, sae_id = sae.split("/", 1)
        digits = re.findall(r"\d+", sae_id)
        return (int(digits[0]) if digits else None), release
    if isinstance(inputs.get("layer"), int):
        return inputs["layer"], None
    key = inputs.get("key")
    match = re.fullmatch(r"(?:layer_|layers\.)(\d+)", key) if isinstance(key, str) else None
    return (int(match.group(1)) if match else None), None

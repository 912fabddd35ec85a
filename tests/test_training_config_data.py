"""Config parsing/overrides/errors; data reading, checks and dataset mixing."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from selfie_adapters.errors import SelfieError
from selfie_adapters.testing import toy_tokenizer, write_toy_data
from selfie_adapters.training.config import apply_override, config_from_dict, load_config
from selfie_adapters.training.data import DataConfig, load_training_data
from selfie_adapters.training.sampling import EpochSampler, parse_ratios


def test_defaults_match_reference():
    cfg = config_from_dict({})
    assert (cfg.data.batch_size, cfg.training.learning_rate, cfg.training.warmup_steps) == (80, 0.01, 10)
    t = cfg.training
    assert (t.gradient_clip_norm, t.scheduler_type) == (0.5, "cosine")
    # left to the model (filled in by the trainer, see test_model_family.py)
    assert (cfg.projection.init_scale, cfg.data.eos_token, cfg.soft_prompt.template) == (None, None, None)
    assert cfg.logging.wandb_project == "selfie-adapter-training" and cfg.seed == 42
    # our deliberate difference: the reference's scalar_affine collapses on small models (README "Named entities")
    assert (cfg.projection.type, cfg.projection.low_rank_rank) == ("scalar_affine_plus_low_rank", None)


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  learning_rat: 0.1\n")
    with pytest.raises(SelfieError, match=r"training\.'learning_rat'.*valid keys in training: learning_rate"):
        load_config(tmp_path / "c.yaml")



def test_reference_keys_unknown_top_level_ignored_direction_lr_accepted(caplog):
    """As the reference: unknown top-level keys are ignored (logged), direction_learning_rate is valid."""
    import logging

    with caplog.at_level(logging.WARNING, logger="selfie_adapters.training.config"):
        cfg = config_from_dict({"trainer": {}, "notes": "x", "training": {"direction_learning_rate": None}})
    assert cfg.training.direction_learning_rate is None and "'trainer', 'notes'" in caplog.text
    with caplog.at_level(logging.WARNING, logger="selfie_adapters.training.config"):
        cfg = config_from_dict({"training": {"direction_learning_rate": 0.05}})
    assert cfg.training.direction_learning_rate == 0.05 and "scale_direction" in caplog.text
    with pytest.raises(SelfieError, match="direction_learning_rate"):
        config_from_dict({"training": {"direction_learning_rate": -1}})
    with pytest.raises(SelfieError, match="unknown key 'trainig'"):
        apply_override({}, "trainig.max_steps=3")


def test_set_overrides_parse_yaml(tmp_path):
    (tmp_path / "c.yaml").write_text("projection:\n  type: scale_only\n")
    cfg = load_config(tmp_path / "c.yaml", ["training.max_steps=7", "training.learning_rate=1e-3",
                                            "projection.low_rank_rank=null", "seed=3", "logging.use_wandb=false"])
    assert (cfg.training.max_steps, cfg.training.learning_rate, cfg.seed, cfg.logging.use_wandb) == (7, 1e-3, 3, False)
    assert cfg.projection.type == "scale_only"
    with pytest.raises(SelfieError, match="section.key=value"):
        load_config(tmp_path / "c.yaml", ["training.max_steps"])
    with pytest.raises(SelfieError, match="projection.type 'identity' is not trainable"):
        load_config(tmp_path / "c.yaml", ["projection.type=identity"])


def _write(path, sections, gz=False):
    text = json.dumps(sections)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def _section(name, entries, filename="v.pt", layer=0):
    return {"metadata": {"dataset_name": name, "filename": filename, "layer": layer}, "vectors": entries}


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


def test_sections_gz_every_label_its_example_and_strip(tmp_path, tok):
    torch.save(torch.randn(5, 32), tmp_path / "v.pt")
    f = _write(tmp_path / "l.json.gz", [
        _section("a", [{"index": 0, "labels": [" a red fruit ", "a blue stone"], "split": "train"},
                       {"index": 4, "labels": ["a big tree"], "split": "val"}]),
        _section("b", [{"index": 1, "labels": ["a green bird"], "split": "train"}], layer=3)], gz=True)
    data = load_training_data(DataConfig(labels_file=f, strip_labels=True), tok, 32)
    assert data.datasets == ["a@l0", "b@l3"]
    assert data.train.labels == ["a red fruit", "a blue stone", "a green bird"]
    assert data.train.rows.tolist() == [0, 0, 1] and data.val.rows.tolist() == [4]
    assert data.train.lengths.tolist() == [5, 5, 5]  # a, red, fruit, ", eot


def test_jsonl_inline_and_indexed(tmp_path, tok):
    (tmp_path / "a.jsonl").write_text(json.dumps({"vector": [0.5] * 32, "label": "a red fruit"}) + "\n"
                                      + json.dumps({"vector": [1.0] * 32, "label": "a tree", "split": "val"}))
    data = load_training_data(DataConfig(labels_file=str(tmp_path / "a.jsonl")), tok, 32)
    assert len(data.train) == 1 and len(data.val) == 1 and data.vectors.shape == (2, 32)
    torch.save(torch.randn(3, 32), tmp_path / "w.pt")
    (tmp_path / "b.jsonl").write_text(json.dumps({"index": 2, "labels": ["a bird", "a stone"]}))
    data = load_training_data(DataConfig(labels_file=str(tmp_path / "b.jsonl"), vectors_file=str(tmp_path / "w.pt")),
                              tok, 32)
    assert data.train.rows.tolist() == [2, 2]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.update(labels_file="nope.json"), "labels file not found"),
    (lambda d: d.update(vectors_file="missing.pt"), "vectors file not found"),
    (lambda d: d.update(labels_file="bad_index.json"), "vector index 9 out of range; the vectors file has 5 rows"),
    (lambda d: d.update(labels_file="empty.json"), "empty label"),
    (lambda d: d.update(labels_file="nofile.json"), "--set data.vectors_file=FILE"),
    (lambda d: d.update(vectors_file="wide.pt"), "hidden size is 32"),
    (lambda d: d.update(vectors_file="nan.pt"), "NaN"),
])
def test_bad_data_is_one_clear_error(tmp_path, tok, mutate, message):
    torch.save(torch.randn(5, 32), tmp_path / "v.pt")
    torch.save(torch.randn(5, 48), tmp_path / "wide.pt")
    torch.save(torch.full((5, 32), float("nan")), tmp_path / "nan.pt")
    ok = [{"index": 1, "labels": ["a tree"], "split": "train"}]
    _write(tmp_path / "ok.json", [_section("a", ok)])
    _write(tmp_path / "bad_index.json", [_section("a", ok + [{"index": 9, "labels": ["x"]}])])
    _write(tmp_path / "empty.json", [_section("a", ok + [{"index": 2, "labels": ["  "]}])])
    _write(tmp_path / "nofile.json", [{"metadata": {"dataset_name": "sae"}, "vectors": ok}])
    kw = {"labels_file": "ok.json", "strip_labels": True}
    mutate(kw)
    if kw.get("vectors_file"):
        kw["vectors_file"] = str(tmp_path / kw["vectors_file"])
    with pytest.raises(SelfieError, match=message):
        load_training_data(DataConfig(**kw), tok, 32, base_dir=tmp_path)


def test_mixing_ratios_epoch_is_smallest_group():
    names = ["wiki@l19", "sae@l19", "sae@l20"]
    ids = torch.tensor([0] * 100 + [1] * 30 + [2] * 10)
    groups = parse_ratios({"wiki": 2, "sae": 1}, names)
    s = EpochSampler(ids, groups, shuffle=True, seed=0)
    assert s.epoch_length() == 120  # sae has 40 = 1 unit → wiki contributes 80 of its 100
    a, b = s.order(0), s.order(1)
    assert (ids[a] == 0).sum() == 80 and not torch.equal(a.sort().values, b.sort().values)
    fixed = EpochSampler(ids, groups, shuffle=True, seed=0, resample_each_epoch=False)
    assert torch.equal(fixed.order(0).sort().values, fixed.order(1).sort().values)
    listed = parse_ratios([{"datasets": ["sae@l20", "wiki"], "ratio": 1}, {"datasets": "sae@l19", "ratio": 1}], names)
    assert [g.datasets for g in listed] == [(2, 0), (1,)]
    with pytest.raises(SelfieError, match="matches no dataset"):
        parse_ratios({"books": 1}, names)


def test_toy_data_helper_round_trips(tmp_path, tok):
    data = load_training_data(DataConfig(labels_file=str(write_toy_data(tmp_path))), tok, 32)
    assert len(data.train) == 36 and len(data.val) == 12


def test_validation_subset_mixes_by_val_dataset_ratios():
    from selfie_adapters.training.data import Split
    from selfie_adapters.training.sampling import validation_subset

    ids = torch.tensor([0] * 60 + [1] * 20)  # dataset a: 60 val examples, b: 20
    val = Split(torch.arange(80), torch.ones(80, 2, dtype=torch.long), torch.ones(80, dtype=torch.long), ids,
                [str(i) for i in range(80)])
    mixed = validation_subset(val, ["a", "b"], {"a": 1, "b": 1}, 1.0, seed=0)
    assert mixed.dataset_ids.tolist().count(0) == 20 and mixed.dataset_ids.tolist().count(1) == 20
    again = validation_subset(val, ["a", "b"], {"a": 1, "b": 1}, 1.0, seed=0)
    assert mixed.rows.tolist() == again.rows.tolist()  # a fixed subset
    only_a = validation_subset(val, ["a", "b"], {"a": 1}, 1.0, seed=0)
    assert set(only_a.dataset_ids.tolist()) == {0} and len(only_a) == 60  # only the named datasets
    by_train = validation_subset(val, ["a", "b"], None, 1.0, seed=0, train_ratios={"b": 1})
    assert by_train.rows.tolist() == list(range(60, 80))  # the reference loads only datasets it names


def test_validation_subset_is_the_reference_draw():
    """int(n·f) indices from np.random.RandomState(seed).choice(n, size, replace=False), sorted."""
    import numpy as np

    from selfie_adapters.training.data import Split
    from selfie_adapters.training.sampling import validation_subset

    n = 4541  # the Goodfire val split
    val = Split(torch.arange(n), torch.ones(n, 1, dtype=torch.long), torch.ones(n, dtype=torch.long),
                torch.zeros(n, dtype=torch.long), [""] * n)
    got = validation_subset(val, ["goodfire"], None, 0.1, seed=42)
    rng = np.random.RandomState(42)  # written out as the reference's trainer does it
    want = sorted(rng.choice(n, size=int(n * 0.1), replace=False))
    assert len(got) == 454 and got.rows.tolist() == [int(i) for i in want]
    assert len(validation_subset(val, ["goodfire"], None, 1.0, seed=42)) == n


def test_sources_checked_before_any_model_loads(tmp_path, monkeypatch):
    import sys

    import pytest

    from selfie_adapters.errors import SelfieError
    from selfie_adapters.training.config import config_from_dict
    from selfie_adapters.training.trainer import train

    labels = tmp_path / "labels.json"
    labels.write_text("[]")

    def cfg(**data):
        return config_from_dict({"model": {"name": "no/such-model"}, "data": data}, base_dir=tmp_path)

    with pytest.raises(SelfieError, match="labels file not found: nope.json"):
        train(cfg(labels_file="nope.json"))  # would otherwise try to download no/such-model first
    with pytest.raises(SelfieError, match="vectors file not found: w.pt"):
        train(cfg(labels_file="labels.json", vectors_file="w.pt#W"))
    monkeypatch.setitem(sys.modules, "sae_lens", None)
    with pytest.raises(SelfieError, match=r"needs sae-lens: pip install 'selfie-adapters\[sae\]'"):
        train(cfg(labels_file="labels.json", vectors_file="sae-lens:r/layer_19"))


def test_example_config_loads_and_names_no_path_of_one_machine():
    """The shipped example runs on any clone: its files are relative (read from the run folder, else the
    config's) and it parses with the current schema."""
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "goodfire-l19-scalar-affine.yaml"
    cfg = load_config(str(example))
    assert not Path(cfg.data.labels_file).is_absolute() and "/work/" not in example.read_text()
    assert cfg.data.labels_file == "goodfire-llama-3.1-8b-instruct-l19-labels.json.gz"

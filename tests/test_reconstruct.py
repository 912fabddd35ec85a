"""Reconstructors (text → vector): scores, the file format (every head kind), training on the shared loop
(exact resume), the model guard, best-of-K marks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from selfie_adapters import load_adapter
from selfie_adapters.adapters.kinds import PROJECTIONS, build_projection
from selfie_adapters.errors import SelfieError
from selfie_adapters.files import read_safetensors
from selfie_adapters.reconstruct import (
    ReaderPrompt,
    Reconstructor,
    Scorer,
    auc,
    baseline_stats,
    load_reconstructor,
    mark_best,
    read_states,
    score,
)
from selfie_adapters.reconstruct.config import reconstruct_config_from_dict
from selfie_adapters.reconstruct.train import data_layer, train_reconstructor
from selfie_adapters.testing import CLASSES, toy_config_dict


def test_scores_follow_the_nla_definitions():
    torch.manual_seed(0)
    pred, target = torch.randn(5, 16), torch.randn(5, 16)
    mu, var = baseline_stats(torch.randn(50, 16))
    s = score(pred, target, mu, var)
    cos = torch.nn.functional.cosine_similarity(pred, target).tolist()
    for i in range(5):
        assert s["cos"][i] == pytest.approx(cos[i], abs=1e-5)
        assert s["mse_nrm"][i] == pytest.approx(2 * (1 - cos[i]), abs=1e-4)  # both scaled to √d
        assert s["fve_nrm"][i] == pytest.approx(1 - s["mse_nrm"][i] / var, abs=1e-5)
    g = torch.nn.functional.normalize(torch.randn(50, 16), dim=-1) * 4.0
    assert baseline_stats(g)[1] == pytest.approx(float((g - g.mean(0)).pow(2).mean()), rel=1e-5)
    assert score(pred, target)["fve_nrm"] == [None] * 5  # no Var: no fve
    assert auc([3, 4], [1, 2]) == 1.0 and auc([1], [1]) == 0.5 and auc([0], [1, 2]) == 0.0


def _reconstructor(kind: str, d: int = 8, **meta) -> Reconstructor:
    torch.manual_seed(1)
    head = build_projection(kind, d, rank=2 if PROJECTIONS[kind].needs_rank else None, init_scale=1.0)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    mean = torch.randn(d) if kind == "identity" else None
    return Reconstructor(head, ReaderPrompt(layer=1, pooling="mean"), torch.randn(d), 0.7, meta, input_mean=mean)


@pytest.mark.parametrize("kind", list(PROJECTIONS))
def test_save_load_round_trip_every_head_kind(kind, tmp_path):
    rec = _reconstructor(kind, model_name="m")
    path = rec.save(tmp_path / "rec.safetensors", global_step=3)
    back = load_reconstructor(path)
    x = torch.randn(4, 8)
    torch.testing.assert_close(back.predict(x), rec.predict(x))
    torch.testing.assert_close(back.target_mean, rec.target_mean)
    assert back.reader == rec.reader and back.baseline_var == pytest.approx(0.7) and back.kind == kind
    info = back.summary()
    assert info["artifact"] == "reconstructor" and info["layer"] == 1 and info["global_step"] == "3"


def test_adapter_and_reconstructor_loaders_refuse_each_other(tmp_path):
    path = _reconstructor("full_rank").save(tmp_path / "rec.safetensors")
    with pytest.raises(SelfieError, match="is a reconstructor, not an adapter; pass it with --reconstructor"):
        load_adapter(path)
    from selfie_adapters import Adapter

    ad = Adapter(build_projection("scalar_affine", 8)).save(tmp_path / "ad.safetensors")
    with pytest.raises(SelfieError, match="is not a reconstructor.*--adapter"):
        load_reconstructor(ad)
    _, meta = read_safetensors(path)
    assert meta["selfie_artifact"] == "reconstructor" and meta["projection_type"] == "full_rank"


def test_reader_pools_the_label_tokens(tokenizer, tiny_model):
    last = ReaderPrompt(layer=1)
    ids, pos = last.encode(tokenizer, "Paris")
    assert pos == [len(ids) - 1]
    ids, pos = ReaderPrompt(layer=1, pooling="mean").encode(tokenizer, "the city of Paris")
    assert tokenizer.decode([ids[p] for p in pos]).strip() == "the city of Paris"
    with pytest.raises(SelfieError, match="exactly once"):
        ReaderPrompt(layer=1, prompt="no slot")
    states = read_states(tiny_model, tokenizer, ["a", "Paris", "a longer label here"], last, batch_size=2)
    alone = read_states(tiny_model, tokenizer, ["Paris"], last)
    torch.testing.assert_close(states[1], alone[0], atol=1e-4, rtol=1e-4)  # padding changes nothing
    from selfie_adapters.vectors.hidden import hidden_states_batch

    mean = ReaderPrompt(layer=2, pooling="mean")
    labels = ["the city of Paris", "Rome", "a very long label about a river"]
    got = read_states(tiny_model, tokenizer, labels, mean, batch_size=3)  # shared prefix once, tails padded
    for label, row in zip(labels, got):  # the whole prompt alone, no cache, no padding
        ids, pos = mean.encode(tokenizer, label)
        full = hidden_states_batch(tiny_model, [ids], [2], 0)[2][0]  # (T, d)
        torch.testing.assert_close(row, full[pos].mean(0), atol=1e-4, rtol=1e-4)


def test_roundtrip_is_exact_for_the_extraction_prompt(tokenizer, tiny_model):
    from selfie_adapters.vectors.hidden import extract_hidden_states

    names = ["Paris", "Rome", "Lima"]
    states = extract_hidden_states(tiny_model, tokenizer, [f"Tell me about {n}." for n in names], 2)[2]
    mean = states.mean(0)
    rec = Reconstructor.roundtrip(mean, 2, states - mean)
    scores = Scorer(tiny_model, tokenizer, rec).score(names, states - mean)
    assert all(s["cos"] == pytest.approx(1.0, abs=1e-4) and s["mse_nrm"] < 1e-4 for s in scores)


def test_guard_refuses_another_dimension_and_model(tokenizer, tiny_model):
    with pytest.raises(SelfieError, match="reconstructor expects d=8 but the model's hidden size is 64"):
        Scorer(tiny_model, tokenizer, _reconstructor("full_rank", 8))
    rec = _reconstructor("full_rank", 64, model_name="other-model",
                         model_signature=json.dumps({"hidden_size": 64, "num_hidden_layers": 99}))
    with pytest.raises(SelfieError, match="num_hidden_layers=4 .expected 99"):
        Scorer(tiny_model, tokenizer, rec)


def test_mark_best_picks_the_lowest_mse_per_vector():
    rows = [{"index": i, "label": lab, "score": {"mse_nrm": m}}
            for i, lab, m in ((0, "a", 0.5), (0, "b", 0.2), (1, "c", 0.9), (1, "d", 0.9))]
    rows.append({"index": 2, "label": "e"})
    marked = mark_best(rows)
    assert [r.get("best") for r in marked] == [False, True, True, False, None]


def _config(root, tmp_path, **training):
    raw = toy_config_dict(root, **{"checkpoint_dir": str(tmp_path), "learning_rate": 0.05, **training})
    raw["projection"] = {"type": "full_rank"}
    raw["reconstructor"] = {"pooling": "mean", "batch_size": 16}
    return reconstruct_config_from_dict(raw)


def test_training_lowers_mse_and_resume_is_exact(toy_task, tmp_path):
    root, tok, model = toy_task
    cfg = _config(root, tmp_path / "a", max_steps=12, validation_every_n_steps=4, checkpoint_every_n_steps=5)
    assert cfg.reconstructor.layer is None and data_layer(["toy@l0"]) == 0  # the labels file says layer 0
    full = train_reconstructor(cfg, model=model, tokenizer=tok)
    metrics = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert vals[-1] < vals[0] and 0 <= vals[-1] <= 4
    rec = load_reconstructor(full.final_path)
    assert rec.reader.layer == 0 and rec.reader.pooling == "mean" and rec.kind == "full_rank"
    assert json.loads(rec.metadata["config_json"])["reconstructor"]["pooling"] == "mean"
    assert math.isfinite(float(rec.metadata["best_val_fve_nrm"]))
    cfg_b = _config(root, tmp_path / "b", max_steps=12, validation_every_n_steps=4, checkpoint_every_n_steps=5)
    part = train_reconstructor(cfg_b, model=model, tokenizer=tok, stop_at_step=7)
    assert part.final_path is None and part.global_step == 7
    with pytest.raises(SelfieError, match="already holds a run"):
        train_reconstructor(cfg_b, model=model, tokenizer=tok)
    done = train_reconstructor(cfg_b, model=model, tokenizer=tok, resume=True)
    a, _ = read_safetensors(full.final_path)
    b, _ = read_safetensors(done.final_path)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_reconstructor_scores_own_labels_above_others_after_training(toy_task, tmp_path):
    root, tok, model = toy_task
    result = train_reconstructor(_config(root, tmp_path, max_steps=40, validation_every_n_steps=40),
                                 model=model, tokenizer=tok)
    rec = load_reconstructor(result.final_path)
    vectors = torch.load(root / "vectors.pt")
    labels = [CLASSES[i % len(CLASSES)] for i in range(len(vectors))]
    scorer = Scorer(model, tok, rec)
    own = scorer.score(labels, vectors)
    other = scorer.score([CLASSES[(i + 1) % len(CLASSES)] for i in range(len(vectors))], vectors)
    assert auc([s["cos"] for s in own], [s["cos"] for s in other]) > 0.9
    assert scorer.labels_read == len(CLASSES)  # each distinct label read once


def test_config_checks(toy_task, tmp_path):
    root, _, _ = toy_task
    raw = toy_config_dict(root)
    with pytest.raises(SelfieError, match="reconstructor.pooling 'max'"):
        reconstruct_config_from_dict({**raw, "reconstructor": {"pooling": "max"}})
    with pytest.raises(SelfieError, match="unknown config key reconstructor.'lyer'"):
        reconstruct_config_from_dict({**raw, "reconstructor": {"lyer": 3}})
    cfg = reconstruct_config_from_dict({**raw, "projection": {"type": "low_rank_only"}})
    assert cfg.projection.low_rank_rank == 64 and cfg.logging.log_sample_generations == 0

"""Generation scoring on a tiny Llama wired so that what it writes and where a latent fires are known.

All block outputs are zeroed (o_proj, down_proj = 0), so the residual after any block equals the
token embedding. Orthonormal embeddings u1..u5 then make the greedy continuation of the assistant
header ("\\n\\n") exactly  "hello" " world" <|eot_id|>, and an SAE column equal to u_k fires on
exactly one token id.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama

from selfie_adapters.errors import SelfieError
from selfie_adapters.evals.generation import (
    content_token_mask,
    generation_eval,
    score_conversations,
    summarize,
)
from selfie_adapters.evals.sae_probe import SimpleSAE, latent_probe

NL2, HELLO, WORLD, EOT, CUT = 271, 15339, 1917, 128009, 38766  # "\n\n" "hello" " world" eot "Cut"(ting)
LAT = {"hello": 0, "world": 1, "eot": 2, "cut": 3, "never": 4}


@pytest.fixture(scope="module")
def wired():
    model = make_tiny_llama(layers=2)
    d = model.config.hidden_size
    u = torch.linalg.qr(torch.randn(d, 6, generator=torch.Generator().manual_seed(1)))[0].T  # (6, d)
    for block in model.model.layers:
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    E, W = model.model.embed_tokens.weight, model.lm_head.weight
    for src, dst, k in [(NL2, HELLO, 0), (HELLO, WORLD, 1), (WORLD, EOT, 2)]:
        E[src] = u[k]
        W[dst] = 10 * u[k]
    E[EOT], E[CUT] = u[3], u[4]
    W_enc = torch.stack([u[1], u[2], u[3], u[4], u[5]], dim=1)  # fires on hello, world, eot, Cut, nothing
    sae = SimpleSAE(W_enc, torch.full((5,), -0.5), torch.zeros(d), layer=1)
    return model, sae


def run(model, tokenizer, sae, tmp_path, labels, **kw):
    out = tmp_path / "gen.jsonl"
    kw = {"samples": 2, "temperature": 0.0, "max_new_tokens": 6, "batch_size": 4, **kw}
    rep = generation_eval(model, tokenizer, sae, labels, out, **kw)
    return rep, [json.loads(x) for x in out.read_text().splitlines()]


def test_hits_count_only_generated_content_tokens(wired, tokenizer, tmp_path):
    model, sae = wired
    labels = [(LAT[k], "Cutting edge") for k in LAT]  # "Cut" is in the system block AND the instruction
    rep, rows = run(model, tokenizer, sae, tmp_path, labels)
    by = {r["latent"]: r for r in rows if r["sample"] == 0}
    assert by[LAT["hello"]]["text"] == "hello world" and by[LAT["hello"]]["n_content"] == 2
    assert by[LAT["hello"]]["hit"] and by[LAT["hello"]]["first_hit"] == 0
    assert by[LAT["world"]]["hit"] and by[LAT["world"]]["first_hit"] == 1
    assert by[LAT["world"]]["max_act"] == pytest.approx(0.5, abs=1e-4)
    for k in ("eot", "cut", "never"):  # EOT is special; "Cut" only appears in the prompt
        assert not by[LAT[k]]["hit"] and by[LAT[k]]["max_act"] == 0.0
    assert rep["n_trials"] == 10 and rep["n_failed"] == 0
    assert rep["per_latent"]["1"]["best_label_hit_rate"] == 1.0
    assert rep["mean_max_hit_rate"] == pytest.approx(2 / 5)


def test_rescore_masks_system_block_and_headers(wired, tokenizer):
    model, sae = wired
    conv = [{"role": "user", "content": "hello world"}]
    ids, mask = content_token_mask(tokenizer, conv)
    assert CUT in ids and [t for t, m in zip(ids, mask) if m] == [HELLO, WORLD]
    hits = {k: score_conversations(model, tokenizer, sae, LAT[k], [conv])[0].hit for k in LAT}
    assert hits == {"hello": True, "world": True, "eot": False, "cut": False, "never": False}


def test_single_latent_probe_matches_full_encode():
    torch.manual_seed(0)
    d, m = 16, 300
    sae = SimpleSAE(torch.randn(d, m), torch.randn(m), torch.randn(d), threshold=torch.rand(m))
    x = torch.randn(3, 7, d)
    latents = [5, 17, 299]
    probe = latent_probe(sae, latents)
    full = sae.encode(x)  # (3, 7, m)
    torch.testing.assert_close(probe.activations(x), torch.stack([full[b, :, j] for b, j in enumerate(latents)]))


def test_resume_writes_no_duplicates_and_failures_are_recorded(wired, tokenizer, tmp_path):
    model, sae = wired
    labels = [(0, "greetings"), (1, "the world"), (99, "out of range latent")]
    rep, rows = run(model, tokenizer, sae, tmp_path, labels)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 6 and len(failed) == 2 and all(r["latent"] == 99 for r in failed)
    assert "out of range" in failed[0]["error"] and rep["n_failed"] == 2 and rep["n_trials"] == 4
    rep, rows = run(model, tokenizer, sae, tmp_path, labels, samples=3)  # resume: only sample 2 is new
    keys = [(r["latent"], r["label"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == 9
    _, again = run(model, tokenizer, sae, tmp_path, labels, samples=3)
    assert len(again) == 9
    with pytest.raises(SelfieError, match="other settings"):
        run(model, tokenizer, sae, tmp_path, labels, samples=3, max_new_tokens=9)


def test_summary_metrics():
    rows = [{"latent": 0, "label": a, "sample": k, "status": "ok", "hit": h}
            for a, hs in (("good", [1, 1, 1, 0]), ("bad", [0, 0, 1, 0])) for k, h in enumerate(hs)]
    rows += [{"latent": 1, "label": "x", "sample": k, "status": "ok", "hit": k < 2} for k in range(4)]
    s = summarize(rows)
    assert s["per_latent"]["0"]["best_label"] == "good"
    assert s["mean_max_hit_rate"] == pytest.approx((0.75 + 0.5) / 2)
    assert s["mean_hit_rate"] == pytest.approx((0.5 + 0.5) / 2)
    lo, hi = s["mean_hit_rate_ci95"]
    assert lo <= s["mean_hit_rate"] <= hi
    # held out: best on even samples (good: 1,1 vs bad: 0,1) → good's odd samples (1, 0) → 0.5; latent 1 → 0.5
    assert s["heldout_best_label_hit_rate"] == pytest.approx(0.5)


def test_bad_inputs(wired, tokenizer, tmp_path):
    model, sae = wired
    with pytest.raises(SelfieError, match=r"must contain \{label\}"):
        run(model, tokenizer, sae, tmp_path, [(0, "x")], prompt="Write something.")
    with pytest.raises(SelfieError, match="layer 7 out of range"):
        run(model, tokenizer, sae, tmp_path, [(0, "x")], layer=7)
    with pytest.raises(SelfieError, match="needs an integer 'latent'"):
        run(model, tokenizer, sae, tmp_path, [{"label": "x"}])

"""Generation scoring on a tiny Llama wired so that what it writes and where a latent fires are known.

Block outputs are zeroed (o_proj, down_proj = 0), so the residual after any block equals the token
embedding. Orthonormal embeddings u0..u4 then make the greedy continuation of the assistant header
("\\n\\n") exactly  "hello" " world" <|eot_id|>, and an SAE column equal to u_k fires on exactly one
token id. One leak path is left open on purpose: block 0 attends uniformly (q = k = 0) and copies the
u6 direction, which only " elephant" carries — so in a context that contains " elephant" every later
state has a u6 component, and the "label" latent (column u6) fires there.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from selfie_adapters.errors import SelfieError
from selfie_adapters.evals.generation import (
    DEFAULT_PROMPT,
    content_token_mask,
    encode_chat,
    generate_conversations,
    generation_eval,
    parse_conversation,
    score_conversations,
    summarize,
)
from selfie_adapters.evals.sae_probe import SimpleSAE, latent_probe
from selfie_adapters.interpret.generate import pick_tokens
from selfie_adapters.testing import make_tiny_llama
from selfie_adapters.vectors.hidden import hidden_states_batch

NL2, HELLO, WORLD, EOT, CUT = 271, 15339, 1917, 128009, 38766  # "\n\n" "hello" " world" eot "Cut"(ting)
ELEPHANT = 46840  # " elephant"
LAT = {"hello": 0, "world": 1, "eot": 2, "cut": 3, "never": 4, "label": 5}


@pytest.fixture(scope="module")
def wired():
    model = make_tiny_llama(layers=2)
    d = model.config.hidden_size
    u = torch.linalg.qr(torch.randn(d, 7, generator=torch.Generator().manual_seed(1)))[0].T  # (7, d)
    for block in model.model.layers:
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    E, W = model.model.embed_tokens.weight, model.lm_head.weight
    E -= (E @ u[6])[:, None] * u[6]  # no token but " elephant" carries u6
    for src, dst, k in [(NL2, HELLO, 0), (HELLO, WORLD, 1), (WORLD, EOT, 2)]:
        E[src] = u[k]
        W[dst] = 10 * u[k]
    E[EOT], E[CUT], E[ELEPHANT] = u[3], u[4], u[6]
    attn = model.model.layers[0].self_attn  # uniform attention that copies u6 forward
    attn.q_proj.weight.zero_()
    attn.k_proj.weight.zero_()
    attn.v_proj.weight[0] = u[6]
    attn.o_proj.weight[:, 0] = 20 * u[6]
    W_enc = torch.stack([u[1], u[2], u[3], u[4], u[5], u[6]], dim=1)  # hello, world, eot, Cut, nothing, u6
    sae = SimpleSAE(W_enc, torch.full((6,), -0.5), torch.zeros(d), layer=1)
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
    for k in ("eot", "cut", "never", "label"):  # EOT is special; "Cut" only appears in the prompt
        assert not by[LAT[k]]["hit"] and by[LAT[k]]["max_act"] == 0.0
    assert rep["n_trials"] == 12 and rep["n_failed"] == 0
    assert rep["per_latent"]["1"]["best_label_hit_rate"] == 1.0
    assert rep["mean_max_hit_rate"] == pytest.approx(2 / 6)


def test_label_named_only_in_the_instruction_does_not_leak(wired, tokenizer, tmp_path):
    model, sae = wired
    _, rows = run(model, tokenizer, sae, tmp_path, [(LAT["label"], "elephant")], samples=1)
    assert rows[0]["text"] == "hello world" and not rows[0]["hit"] and rows[0]["max_act"] == 0.0
    # control: read in the writing context (instruction + what was written), the latent does fire on
    # the written tokens — that was the leak
    prompt = encode_chat(tokenizer, [{"role": "user", "content": DEFAULT_PROMPT.replace("{label}", "elephant")}],
                         generation_prompt=True)[1]
    assert ELEPHANT in prompt
    h = hidden_states_batch(model, [prompt + [HELLO, WORLD]], [1], 0)[1]  # (1, T, d)
    in_context = latent_probe(sae, [LAT["label"]]).activations(h)[0, -2:]
    assert (in_context > 0).all()
    # and on a conversation that does contain the word, it fires
    hit = score_conversations(model, tokenizer, sae, LAT["label"], [[{"role": "user", "content": "an elephant"}]])
    assert hit[0].hit and hit[0].first_hit == 1


def test_gumbel_sampler_matches_softmax_and_is_seeded():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, math.log(3.0), -30.0]]).repeat(4000, 1)  # p = 1/4, 3/4, ~0
    picks = pick_tokens(logits, 1.0, 1.0, None)
    assert (picks == 1).float().mean().item() == pytest.approx(0.75, abs=0.03) and not (picks == 2).any()
    gens = [torch.Generator().manual_seed(k) for k in (1, 2)]
    again = [torch.Generator().manual_seed(k) for k in (1, 2)]
    wide = torch.randn(2, 1000)
    assert torch.equal(pick_tokens(wide, 1.0, 1.0, gens), pick_tokens(wide, 1.0, 1.0, again))


def test_parse_conversation():
    text = "Sure! Here it is:\n\n**User:** Hi there\nhow are you?\n**Assistant:** Fine.\nUser:\nAI: ok"
    assert parse_conversation(text) == [{"role": "user", "content": "Hi there\nhow are you?"},
                                        {"role": "assistant", "content": "Fine."},
                                        {"role": "assistant", "content": "ok"}]
    assert parse_conversation("just words") == [{"role": "user", "content": "just words"}]
    assert parse_conversation("  ") == []


def test_finished_rows_leave_the_batch_without_changing_the_others():
    model = make_tiny_llama(layers=2, vocab=512)  # real attention, so a misaligned cache would show
    prompts = [[1, 79, 68, 31], [1, 96], [1, 40, 93, 11, 18, 64]]
    solo = [generate_conversations(model, [p], max_new_tokens=8, temperature=0.0)[0] for p in prompts]
    stop = {solo[0][1], solo[2][4]}  # rows end at different steps

    def cut(seq):
        return next((seq[:i + 1] for i, t in enumerate(seq) if t in stop), seq)

    batched = generate_conversations(model, prompts, max_new_tokens=8, temperature=0.0, stop_ids=stop)
    assert batched == [cut(s) for s in solo] and len({len(b) for b in batched}) > 1


def test_rescore_masks_system_block_and_headers(wired, tokenizer):
    model, sae = wired
    conv = [{"role": "user", "content": "hello world"}]
    ids, mask = content_token_mask(tokenizer, conv)
    assert CUT in ids and [t for t, m in zip(ids, mask) if m] == [HELLO, WORLD]
    hits = {k: score_conversations(model, tokenizer, sae, LAT[k], [conv])[0].hit for k in LAT}
    assert hits == {"hello": True, "world": True, "eot": False, "cut": False, "never": False, "label": False}


def test_single_latent_probe_matches_full_encode():
    torch.manual_seed(0)
    d, m = 16, 300
    sae = SimpleSAE(torch.randn(d, m), torch.randn(m), torch.randn(d), threshold=torch.rand(m))
    x = torch.randn(3, 7, d)
    latents = [5, 17, 299]
    probe = latent_probe(sae, latents)
    full = sae.encode(x)  # (3, 7, m)
    torch.testing.assert_close(probe.activations(x), torch.stack([full[b, :, j] for b, j in enumerate(latents)]))
    torch.testing.assert_close(probe.select([2, 0]).activations(x[[2, 0]]), full[[2, 0]][:, :, [299, 5]].diagonal(
        dim1=0, dim2=2).T)


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
    with pytest.raises(SelfieError, match="other inputs"):
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


def test_reference_protocol_counts_the_system_block_and_tags(wired, tokenizer, tmp_path):
    """The reference's rule reads every token after BOS: "Cut" (only in the Llama-3.1 system block) and
    <|eot_id|> (only in the template) hit there and never under ours; the report names the protocol."""
    model, sae = wired
    labels = [(LAT[k], "Cutting edge") for k in LAT]
    ref, rows = run(model, tokenizer, sae, tmp_path, labels, protocol="reference", samples=1)
    by = {r["latent"]: r["hit"] for r in rows}
    assert by == {LAT["hello"]: True, LAT["world"]: True, LAT["eot"]: True, LAT["cut"]: True,
                  LAT["never"]: False, LAT["label"]: False}
    assert ref["protocol"] == "reference" and ref["mean_max_hit_rate"] == pytest.approx(4 / 6)
    settings = json.loads((tmp_path / "gen.jsonl.settings.json").read_text())["inputs"]
    assert settings["protocol"] == "reference" and settings["prompt"].startswith("Produce a VERY SHORT")
    assert settings["system"].endswith("[ASSISTANT] I'm the assistant.") and settings["top_p"] == 0.9
    ours, _ = run(model, tokenizer, sae, tmp_path / "ours", labels, samples=1)
    assert ours["protocol"] == "default" and ours["mean_max_hit_rate"] == pytest.approx(2 / 6)
    with pytest.raises(SelfieError, match="unknown protocol 'paper'"):
        run(model, tokenizer, sae, tmp_path / "x", labels, protocol="paper")

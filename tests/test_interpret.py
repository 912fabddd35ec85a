"""The SelfIE prompt, soft-token injection and generation on a tiny random Llama."""

import pytest
import torch

from selfie_adapters import Adapter, Interpreter, PromptTemplate, SelfieError, build_projection, generate
from selfie_adapters.interpret.inject import embed_with_soft_tokens, residual_overwrite
from selfie_adapters.models.tree import decoder_layers


def test_template_sites(tokenizer):
    ids, sites = PromptTemplate().encode(tokenizer)
    assert len(ids) == 26 and sites == [11, 22]
    assert ids[11] == ids[22] == 128002


def test_template_errors(tokenizer):
    with pytest.raises(SelfieError, match="does not contain the injection token"):
        PromptTemplate("What is this?")
    with pytest.raises(SelfieError, match="tokenizer has no token '<\\|nope\\|>'"):
        PromptTemplate("What is <|nope|>?", injection_token="<|nope|>").encode(tokenizer)


def test_injection_changes_only_positions_from_first_site(tiny_model, tokenizer):
    ids, sites = PromptTemplate().encode(tokenizer)
    input_ids = torch.tensor([ids])
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    mask[0, sites] = True
    plain = tiny_model(input_ids=input_ids).logits
    soft = torch.randn(1, 64) * 3
    injected = tiny_model(inputs_embeds=embed_with_soft_tokens(tiny_model, input_ids, mask, soft)).logits
    torch.testing.assert_close(injected[:, :11], plain[:, :11])
    assert (injected[0, 11:] - plain[0, 11:]).abs().amax(-1).min() > 1e-4  # every later position moves


def test_both_sites_receive_the_soft_token(tiny_model, tokenizer):
    ids, sites = PromptTemplate().encode(tokenizer)
    input_ids = torch.tensor([ids])
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    mask[0, sites] = True
    soft = torch.randn(1, 64)
    emb = embed_with_soft_tokens(tiny_model, input_ids, mask, soft)
    torch.testing.assert_close(emb[0, 11], soft[0])
    torch.testing.assert_close(emb[0, 22], soft[0])
    torch.testing.assert_close(emb[0, 12], tiny_model.get_input_embeddings().weight[ids[12]])


def test_layer_k_injection_equals_hand_made_hook(tiny_model, tokenizer):
    ids, sites = PromptTemplate().encode(tokenizer)
    input_ids = torch.tensor([ids])
    vec = torch.randn(1, 64)

    def hand_hook(module, args, kwargs):
        hidden = args[0].clone() if args else kwargs["hidden_states"].clone()
        hidden[0, sites] = vec[0]
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    h = decoder_layers(tiny_model)[2].register_forward_pre_hook(hand_hook, with_kwargs=True)
    try:
        expected = tiny_model(input_ids=input_ids).logits
    finally:
        h.remove()
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    mask[0, sites] = True
    with residual_overwrite(tiny_model, 2, mask, vec):
        got = tiny_model(input_ids=input_ids).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(tiny_model(input_ids=input_ids).logits, expected)  # hook removed


def test_layer_k_generation_matches_full_recompute(tiny_model, tokenizer):
    """The KV cache carries the patch: each generated token equals a full hooked forward's argmax."""
    interp = Interpreter(tiny_model, tokenizer, inject_layer=2)
    vec = torch.randn(1, 64)
    out = interp.describe(vec, scales=[4.0], max_new_tokens=5)[0]
    soft = interp.soft_tokens(vec, 4.0)
    seq = list(interp.prompt_ids)
    mask = torch.zeros(1, 26, dtype=torch.bool)
    mask[0, interp.sites] = True
    toks = tokenizer(out.text, add_special_tokens=False)["input_ids"]
    for t in toks[:3]:
        full_mask = torch.cat([mask, torch.zeros(1, len(seq) - 26, dtype=torch.bool)], 1)
        with residual_overwrite(tiny_model, 2, full_mask, soft):
            nxt = tiny_model(input_ids=torch.tensor([seq])).logits[0, -1].argmax().item()
        assert nxt == t
        seq.append(t)


def test_generate_matches_naive_greedy_loop(tiny_model, tokenizer):
    interp = Interpreter(tiny_model, tokenizer)
    vec = torch.randn(2, 64)
    outs = interp.describe(vec, scales=[3.0], max_new_tokens=6)
    for row, d in enumerate(outs):
        soft = interp.soft_tokens(vec[row:row + 1], 3.0)
        seq = torch.tensor([interp.prompt_ids])
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[0, interp.sites] = True
        emb = embed_with_soft_tokens(tiny_model, seq, mask, soft)
        got = []
        for _ in range(6):
            nxt = tiny_model(inputs_embeds=emb).logits[0, -1].argmax()
            got.append(nxt.item())
            if nxt.item() in interp.stop_ids:
                break
            emb = torch.cat([emb, tiny_model.get_input_embeddings()(nxt)[None, None]], 1)
        assert tokenizer.decode(got) == d.text


def test_label_same_alone_and_in_padded_batch(tiny_model, tokenizer):
    """A short prompt left-padded beside a longer one gives the same greedy continuation."""
    ids, sites = PromptTemplate().encode(tokenizer)
    long_ids = tokenizer("Please answer briefly.", add_special_tokens=False)["input_ids"] + ids
    long_sites = [s + len(long_ids) - len(ids) for s in sites]
    soft = torch.randn(2, 64) * 3
    alone = generate(tiny_model, [ids], [sites], soft[1:], max_new_tokens=6)[0]
    batch = generate(tiny_model, [long_ids, ids], [long_sites, sites], soft, max_new_tokens=6)
    assert batch[1].tokens == alone.tokens
    torch.testing.assert_close(torch.tensor(batch[1].logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0)


def test_the_head_gets_contiguous_rows_in_prefill_and_decode(tiny_model, tokenizer):
    """A strided (B, 1, d) slice sends the LM head to a per-row bmm that re-reads its (V, d) weight for
    every row (13x slower at a 128k vocabulary on CPU); generation hands it contiguous rows."""
    seen = []
    hook = tiny_model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        Interpreter(tiny_model, tokenizer).describe(torch.randn(3, 64), scales=[2.0], max_new_tokens=3)
    finally:
        hook.remove()
    assert seen and all(x.is_contiguous() for x in seen) and seen[0].shape == (3, 1, 64)


def test_batching_does_not_change_labels(tiny_model, tokenizer):
    interp = Interpreter(tiny_model, tokenizer)
    vec = torch.randn(3, 64)
    one = interp.describe(vec, scales=[2.0, 8.0], max_new_tokens=4, batch_size=1)
    many = interp.describe(vec, scales=[2.0, 8.0], max_new_tokens=4, batch_size=5)
    assert [d.text for d in one] == [d.text for d in many]


def test_sampling_seeded_and_independent_of_batch(tiny_model, tokenizer):
    interp = Interpreter(tiny_model, tokenizer)
    vec = torch.randn(3, 64)
    kw = dict(scales=[5.0], samples=2, max_new_tokens=6, temperature=1.0, top_p=0.9)
    a = interp.describe(vec, seed=1, batch_size=2, **kw)
    b = interp.describe(vec, seed=1, batch_size=6, **kw)
    c = interp.describe(vec, seed=2, batch_size=6, **kw)
    assert [d.text for d in a] == [d.text for d in b]
    assert [d.text for d in a] != [d.text for d in c]
    assert [d.key for d in a] == [(i, 5.0, k) for i in range(3) for k in range(2)]


def _forced_describe(model, tokenizer, target: list[int], max_new_tokens: int | None = 30, **kw):
    """Describe one random vector while the LM head is forced to emit ``target`` token by token."""
    interp = Interpreter(model, tokenizer, **kw)
    step = {"i": 0}

    def force(module, args, output):  # make the LM head prefer the next target token
        logits = output.clone()
        logits[:, -1, target[min(step["i"], len(target) - 1)]] += 1e4
        step["i"] += 1
        return logits

    h = model.lm_head.register_forward_hook(force)
    try:
        return interp.describe(torch.randn(1, 64), scales=[1.0], max_new_tokens=max_new_tokens)[0]
    finally:
        h.remove()


QUOTED = ' Use of "takes place" in text."'  # a Goodfire-style label with inner quotes, then the closing `."`


def test_label_is_text_before_the_last_quote_generated_to_end_of_turn(tiny_model, tokenizer):
    """Reference default (strip_last_quote): run to <|eot_id|>, cut at the last quote."""
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    target = tokenizer(QUOTED, add_special_tokens=False)["input_ids"] + [eot]
    d = _forced_describe(tiny_model, tokenizer, target, label_end="last-quote")
    assert d.text == QUOTED and d.closed
    assert d.label == 'Use of "takes place" in text.'
    assert d.logprob == pytest.approx(0.0, abs=1e-3)


def test_label_drops_special_tokens_as_the_reference_decodes_but_text_keeps_them(tiny_model, tokenizer):
    """The reference decodes with skip_special_tokens=True before cutting at the last quote."""
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    special = tokenizer.convert_tokens_to_ids("<|reserved_special_token_5|>")
    words = tokenizer(" a red", add_special_tokens=False)["input_ids"]
    rest = tokenizer(' fruit"', add_special_tokens=False)["input_ids"]
    d = _forced_describe(tiny_model, tokenizer, words + [special] + rest + [eot], label_end="last-quote")
    assert d.text == ' a red<|reserved_special_token_5|> fruit"' and d.closed
    assert d.label == "a red fruit"


def test_first_quote_label_end_stops_early_and_cuts_at_the_first_quote(tiny_model, tokenizer):
    from selfie_adapters.models.tokens import stop_token_ids

    quote_ids = stop_token_ids(tokenizer)
    target = tokenizer(QUOTED, add_special_tokens=False)["input_ids"]
    first = next(i for i, t in enumerate(target) if t in quote_ids)
    d = _forced_describe(tiny_model, tokenizer, target, label_end="first-quote")
    assert d.text == tokenizer.decode(target[:first + 1]) and d.closed  # the row left at the first quote
    assert d.label == "Use of"


RAMBLE = ' déjà vu" in French. It is a French phrase that means "already seen" and'  # SmolLM2, untrained


def test_untrained_baseline_stops_at_the_first_quote_adapters_at_end_of_turn(tiny_model, tokenizer):
    """label_end "auto": a model never trained to stop closes the quote and explains on (it would reach
    end-of-turn late or never, and its last quote lies in the explanation); a trained adapter ends
    with quote + end-of-turn, so its labels may hold quotes (the reference)."""
    from selfie_adapters.models.tokens import stop_token_ids

    target = tokenizer(RAMBLE, add_special_tokens=False)["input_ids"]
    d = _forced_describe(tiny_model, tokenizer, target)
    assert d.label == "déjà vu" and d.closed and d.text == ' déjà vu"'
    quotes = stop_token_ids(tokenizer)
    assert quotes <= set(Interpreter(tiny_model, tokenizer).stop_ids)
    adapter = Adapter(build_projection("scalar_affine", 64, init_scale=2.0), {"model_name": "tiny-llama"})
    trained = Interpreter(tiny_model, tokenizer, adapter)
    assert trained.label_end == "last-quote" and not quotes & set(trained.stop_ids)
    assert Interpreter(tiny_model, tokenizer, label_end="last-quote").label_end == "last-quote"  # a choice stays


def test_max_new_tokens_defaults_to_the_model_familys(tiny_model, tokenizer):
    """Llama-3 (<|eot_id|>): the reference's 40; ChatML (<|im_end|>, SmolLM2) and others: 24."""
    from selfie_adapters.interpret.label_text import family_max_new_tokens
    from selfie_adapters.testing import make_chatml_tokenizer

    assert Interpreter(tiny_model, tokenizer).default_max_new_tokens == 40
    assert Interpreter(tiny_model, make_chatml_tokenizer()).default_max_new_tokens == 24
    assert (family_max_new_tokens("<|eot_id|>"), family_max_new_tokens("<|im_end|>"),
            family_max_new_tokens("<end_of_turn>"), family_max_new_tokens(None)) == (40, 24, 24, 24)
    never = tokenizer(" a red fruit" * 20, add_special_tokens=False)["input_ids"]  # no quote, no end of turn
    d = _forced_describe(tiny_model, tokenizer, never, max_new_tokens=None)
    assert not d.closed and len(tokenizer(d.text, add_special_tokens=False)["input_ids"]) == 40


def test_label_without_a_quote_is_the_whole_text_and_unclosed(tiny_model, tokenizer):
    from selfie_adapters.interpret.label_text import extract_label

    target = tokenizer(" a red fruit", add_special_tokens=False)["input_ids"]
    d = _forced_describe(tiny_model, tokenizer, target)
    assert not d.closed and d.label.startswith("a red fruit")
    assert extract_label(' a "b" c"', label_end="first-quote") == "a"
    assert extract_label(' a "b" c"') == 'a "b" c'
    with pytest.raises(SelfieError, match="label_end must be one of last-quote, first-quote"):
        Interpreter(tiny_model, tokenizer, label_end="quote")


def test_scale_multiplies_the_adapter_input_not_its_bias(tiny_model, tokenizer):
    """Reference evals: adapter(s · x/‖x‖) with the adapter's own normalisation off."""
    torch.manual_seed(0)
    proj = build_projection("scalar_affine_plus_low_rank", 64, rank=4, init_scale=2.0)
    with torch.no_grad():
        proj.bias.normal_()
        proj.U.normal_()
    interp = Interpreter(tiny_model, tokenizer, Adapter(proj, {"model_name": "tiny-llama"}))
    v = torch.randn(3, 64)
    x = v / v.norm(dim=-1, keepdim=True)
    for s in (0.5, 3.4):
        want = 2.0 * s * x + (s * x @ proj.U) @ proj.V.T + proj.bias
        torch.testing.assert_close(interp.soft_tokens(v, s), want.detach())
    assert not torch.allclose(interp.soft_tokens(v, 3.4), 3.4 * interp.soft_tokens(v, 1.0))
    # describe injects exactly these soft tokens (it runs the same Adapter.scaled_transform)
    got = interp.describe(v, scales=[3.4], max_new_tokens=3)
    want = generate(tiny_model, [interp.prompt_ids] * 3, [interp.sites] * 3, interp.soft_tokens(v, 3.4),
                    max_new_tokens=3, stop_ids=interp.stop_ids)
    assert [d.text for d in got] == [tokenizer.decode([t for t in w.tokens if t not in interp.eos_ids]) for w in want]
    identity = Interpreter(tiny_model, tokenizer)
    torch.testing.assert_close(identity.soft_tokens(v, 3.4), 3.4 * x)  # identity: unchanged
    assert identity.default_scales == (0.5, 0.8, 1.3, 2.1, 3.4, 5.5)


def test_describe_injects_the_scaled_input_soft_token(tiny_model, tokenizer):
    proj = build_projection("scalar_affine", 64, init_scale=2.0)
    with torch.no_grad():
        proj.bias.fill_(0.3)
    interp = Interpreter(tiny_model, tokenizer, Adapter(proj, {"model_name": "tiny-llama"}))
    v = torch.randn(1, 64)
    got = interp.describe(v, scales=[5.0], max_new_tokens=3)[0]
    soft = 2.0 * 5.0 * v / v.norm() + 0.3
    want = generate(tiny_model, [interp.prompt_ids], [interp.sites], soft, max_new_tokens=3,
                    stop_ids=interp.stop_ids)[0]
    assert got.text == tokenizer.decode([t for t in want.tokens if t not in interp.eos_ids])


def test_adapter_and_mean_feed_the_soft_token(tiny_model, tokenizer):
    proj = build_projection("scalar_affine", 64, init_scale=2.0)
    interp = Interpreter(tiny_model, tokenizer, Adapter(proj, {"model_name": "tiny-llama"}), mean=torch.ones(64))
    v = torch.randn(2, 64)
    expected = 2.0 * (v - 1) / (v - 1).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(interp.soft_tokens(v), expected)
    with pytest.raises(SelfieError, match="mean vector has shape"):
        Interpreter(tiny_model, tokenizer, mean=torch.ones(3))
    with pytest.raises(SelfieError, match=r"shape \(N, 64\)"):
        interp.describe(torch.randn(2, 3))
    with pytest.raises(SelfieError, match="NaN/Inf"):
        interp.describe(torch.full((1, 64), float("nan")))


def test_inject_layer_out_of_range_is_refused_up_front(tiny_model, tokenizer):
    with pytest.raises(SelfieError, match="inject_layer 4 out of range; this model has blocks 0..3"):
        Interpreter(tiny_model, tokenizer, inject_layer=4)


def test_generate_plain_prompts_shares_prefix_and_matches_naive_loop(tiny_model, tokenizer):
    ids = tokenizer("Tell me about the moon", add_special_tokens=False)["input_ids"]
    outs = generate(tiny_model, [ids, ids, ids], max_new_tokens=5)  # no soft tokens: plain prompts
    seq = list(ids)
    for _ in range(5):
        seq.append(tiny_model(input_ids=torch.tensor([seq])).logits[0, -1].argmax().item())
    assert all(o.tokens == seq[len(ids):] for o in outs)


def test_relevancy_is_zero_when_the_soft_token_is_the_placeholder_itself(tiny_model, tokenizer):
    interp = Interpreter(tiny_model, tokenizer)  # identity + L2 normalisation, so soft = scale · v / ‖v‖
    emb = tiny_model.get_input_embeddings().weight[128002]
    d = interp.describe(emb[None], scales=[emb.norm().item()], max_new_tokens=4, relevancy=True)[0]
    # a random model's token probabilities are ~1e-5, so the bound is far below them
    assert d.relevancy and max(r for _, r in d.relevancy) < 1e-10
    assert "relevancy" in d.to_row() and "relevancy" not in interp.describe(emb[None], max_new_tokens=2)[0].to_row()


def test_relevancy_matches_hand_computed_probabilities(tiny_model, tokenizer):
    interp = Interpreter(tiny_model, tokenizer)
    torch.manual_seed(3)
    vec = torch.randn(2, 64)
    for d, v in zip(interp.describe(vec, scales=[6.0], max_new_tokens=4, relevancy=True), vec):
        soft = interp.soft_tokens(v[None], 6.0)
        toks = generate(tiny_model, [interp.prompt_ids], [interp.sites], soft, max_new_tokens=4,
                        stop_ids=interp.stop_ids)[0].tokens  # the ids behind d.text
        seq = torch.tensor([interp.prompt_ids + toks])
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[0, interp.sites] = True
        patched = tiny_model(inputs_embeds=embed_with_soft_tokens(tiny_model, seq, mask, soft)).logits[0].softmax(-1)
        plain = tiny_model(input_ids=seq).logits[0].softmax(-1)
        P = len(interp.prompt_ids)
        want = [abs(patched[P - 1 + i, t] - plain[P - 1 + i, t]).item() for i, t in enumerate(toks)]
        assert [tokenizer.decode([t]) for t in toks] == [tok for tok, _ in d.relevancy]
        got = torch.tensor([r for _, r in d.relevancy], dtype=torch.float64)
        assert (got > 0).all()  # probabilities are ~1e-5 here: compare relatively
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=2e-3)


def test_label_spread_flags_a_few_dominant_labels_only():
    from selfie_adapters.interpret.label_text import label_spread

    collapsed = label_spread(["Bangalore"] * 75 + ["Osaka", "Swahili"] + [f"x{i}" for i in range(85)])
    assert collapsed.collapsed and collapsed.top[0] == ("Bangalore", 75) and collapsed.distinct == 88
    assert collapsed.summary() == "162 inputs, 88 distinct labels; most frequent: 'Bangalore' ×75 (46%)"
    assert label_spread(["a", "a", "b", "c", "a", "d"]).collapsed  # 'a' on half of them
    assert not label_spread(["a", "b", "c", "d"]).collapsed  # all distinct: no label dominates
    assert not label_spread([f"x{i}" for i in range(20)] + ["x0"]).collapsed
    assert not label_spread(["a", "a", "a"]).collapsed  # too few inputs to judge


def test_spread_summary_is_one_short_line():
    """The counts and the top label cut to 40 characters — not three whole 40-token labels."""
    from selfie_adapters.interpret.label_text import label_spread

    long = ['non-specific" or "non-specific." It refers to a concept or idea that is not specific to a '
            f"particular entity {i}" for i in range(3)]
    line = label_spread([long[0], long[0], long[1], long[2]]).summary()
    assert line == "4 inputs, 3 distinct labels; most frequent: 'non-specific\" or \"non-specific.\" It ref…' ×2 (50%)"
    assert len(line) < 100 and long[1][:40] not in line


@pytest.mark.parametrize("adapter, says, never", [(True, "the adapter may have collapsed", "untrained"),
                                                  (False, "the untrained model says much the same", "adapter")])
def test_spread_warning_speaks_of_what_exists(capsys, adapter, says, never):
    from selfie_adapters.cli.core import print_label_spreads
    from selfie_adapters.interpret.label_text import label_spread

    print_label_spreads({1.0: label_spread(["The"] * 6 + ["A", "B"]), 2.0: label_spread("abcdefgh")}, adapter)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("scale 1: 8 inputs, 3 distinct labels; most frequent: 'The' ×6 (75%)")
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and warning[0].startswith("warning: scale 1: a few labels dominate (3 distinct for 8")
    assert says in warning[0] and never not in warning[0]

"""`--protocol reference` of every eval: the reference implementation's prompts, parsing, read
positions and hit rules, pinned with the real Llama-3 tokenizer and Llama-3.1 chat template."""

from __future__ import annotations

from selfie_adapters.evals.generation import (
    GENERATION_PROTOCOLS,
    REFERENCE_PROMPT,
    REFERENCE_SYSTEM,
    after_bos_mask,
    content_token_mask,
    encode_chat,
    parse_tagged_conversation,
)

LLAMA31_SYSTEM_HEAD = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                       "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")


def test_reference_generation_prompt_text(tokenizer):
    proto = GENERATION_PROTOCOLS["reference"]
    assert (proto.samples, proto.max_new_tokens, proto.temperature, proto.top_p) == (10, 100, 0.7, 0.9)
    messages = [{"role": "system", "content": REFERENCE_SYSTEM},
                {"role": "user", "content": REFERENCE_PROMPT.replace(proto.placeholder, "elephants")}]
    text, ids = encode_chat(tokenizer, messages, generation_prompt=True)
    assert text == (LLAMA31_SYSTEM_HEAD + "You are a helpful AI assistant who generates EXTREMELY SHORT example "
                    "conversations. The conversations are between a user and an assistant, and have the following "
                    "format:\n[USER] I'm a user.\n[ASSISTANT] I'm the assistant.<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nProduce a VERY SHORT conversation which exhibits "
                    "'elephants'\nDo not include any other text in your response. Start immediately with the "
                    "conversation.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids[0] == 128000 and ids[-1] == 271  # BOS ... "\n\n" after the assistant header


def test_reference_parser_reads_tags():
    assert parse_tagged_conversation("[USER] Do you like elephants?\n[ASSISTANT] Yes!") == [
        {"role": "user", "content": "Do you like elephants?"}, {"role": "assistant", "content": "Yes!"}]
    assert parse_tagged_conversation("[USER] a [ASSISTANT] b\nc [USER] d") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b c"}, {"role": "user", "content": "d"}]
    assert parse_tagged_conversation("hello\n[ASSISTANT] hi") == [
        {"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    assert parse_tagged_conversation("User: hi") == [{"role": "user", "content": "User: hi"}]  # no tags: one turn
    assert parse_tagged_conversation("[USER]\n[ASSISTANT]") == [{"role": "assistant", "content": "[USER]\n[ASSISTANT]"}]
    assert parse_tagged_conversation("  ") == []


def test_read_positions_reference_vs_default(tokenizer):
    """reference: every token after BOS (system block, headers, <|eot_id|> included); default: content only."""
    conv = [{"role": "user", "content": "Do you like elephants?"}, {"role": "assistant", "content": "Yes!"}]
    ids, ref = after_bos_mask(tokenizer, conv)
    ids2, ours = content_token_mask(tokenizer, conv)
    assert ids == ids2 and len(ids) == 43 and ids[0] == 128000 and ids[5] == 38766  # "Cut"(ting): system block
    assert ref == [False] + [True] * 42
    assert [tokenizer.decode([t]) for t, m in zip(ids, ours) if m] == ["Do", " you", " like", " elephants", "?",
                                                                        "Yes", "!"]
    assert [i for i, m in enumerate(ours) if m] == [30, 31, 32, 33, 34, 40, 41]


QUESTION = "The mother of the singer of 'Superstition' is"


def test_reference_bridge_prompt_and_positions(tokenizer):
    """The reference: "Complete the statement: " + question, read from the first question token
    (position 34 with the Llama-3.1 rendering, as in its configs) to the end of the prompt."""
    from selfie_adapters.evals.bridge import BRIDGE_PROTOCOLS as BRIDGE
    from selfie_adapters.vectors.prompts import question_tokens

    proto = BRIDGE["reference"]
    ids, pos, strings = question_tokens(tokenizer, QUESTION, prefix=proto.prefix, to_end=proto.to_end)
    assert tokenizer.decode(ids) == (LLAMA31_SYSTEM_HEAD + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
                                     "Complete the statement: " + QUESTION +
                                     "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert pos[0] == 34 and pos[-1] == len(ids) - 1 and pos == list(range(34, len(ids)))
    assert strings[0] == " The" and strings[-5:] == ["<|eot_id|>", "<|start_header_id|>", "assistant",
                                                    "<|end_header_id|>", "\n\n"]
    own, ours, our_strings = question_tokens(tokenizer, QUESTION)  # default: the question's own tokens
    assert "".join(our_strings) == QUESTION and ours[0] == 30 and ours[-1] == len(own) - 6
    assert (proto.samples, proto.temperature, proto.max_new_tokens, proto.untrained_scale) == (10, 0.7, 20, 10.0)


def test_reference_bridge_matches_the_whole_generation(tiny_model, tokenizer, monkeypatch):
    """A description whose label misses the alias but whose text names it: a hit only under the reference."""
    from selfie_adapters import Interpreter
    from selfie_adapters.evals.bridge import bridge_eval
    from selfie_adapters.interpret.describe import Description

    interp = Interpreter(tiny_model, tokenizer)
    seen = {}

    def describe(vectors, *, scales=None, samples=1, **kw):
        seen.update(scales=scales, samples=samples, **kw)
        return [Description(i, scales[0] if scales else 1.0, k, "a soul singer", ' a soul singer" - Stevie Wonder',
                            0.0, True) for i in range(len(vectors)) for k in range(samples)]

    monkeypatch.setattr(interp, "describe", describe)
    rec = {"question": QUESTION, "e2_value": "Stevie Wonder"}
    ref = bridge_eval(interp, rec, layers=[1], protocol="reference")
    assert ref["protocol"] == "reference" and ref["max_score"] == 1.0 and ref["scales"] == [10.0]
    assert (seen["samples"], seen["temperature"], seen["top_p"], seen["max_new_tokens"]) == (10, 0.7, 0.9, 20)
    ours = bridge_eval(interp, rec, layers=[1], samples=2)
    assert ours["protocol"] == "default" and ours["max_score"] == 0.0


def test_reference_retrieval_document_and_defaults(tmp_path):
    from selfie_adapters.evals.retrieval import index_texts, parse_topics, retrieval_eval

    topics = parse_topics([{"id": "t", "title": "Toshiro Mifune", "labels": ["Japanese actor", "Kurosawa star"]},
                           {"id": "u", "title": "Apple", "labels": ["a fruit"]}])
    assert index_texts(topics, "title_plus_all_labels", "reference")[0] == [
        "Toshiro Mifune, who/which could also be described as:\n* Japanese actor\n* Kurosawa star"]
    assert index_texts(topics, "title+labels")[0] == ["Toshiro Mifune: Japanese actor; Kurosawa star"]
    seen = []

    def embed(texts):
        seen.extend(texts)
        return [[float("actor" in t or "Mifune" in t), float("fruit" in t or "Apple" in t)] for t in texts]

    rep = retrieval_eval([{"index": 0, "label": "an actor"}], topics, embed=embed, protocol="reference")
    assert rep["protocol"] == "reference" and rep["strategy"] == "title+labels"
    assert rep["model"] == "thenlper/gte-large" and rep["recall@1"] == 1.0
    assert seen[0].startswith("Toshiro Mifune, who/which could also be described as:")
    assert retrieval_eval([{"index": 0, "label": "an actor"}], topics, embed=embed)["strategy"] == "title"

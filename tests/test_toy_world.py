"""The toy world: generator, tokenizer, and the committed toy model."""

from __future__ import annotations

from collections import Counter

import pytest

from selfie_adapters.toy import (
    TOY_DIR,
    build_tokenizer,
    greedy_answers,
    label,
    load_toy_model,
    make_corpus,
    make_world,
    selfie_qa,
    tell_me_about,
    words,
)

SELFIE_TEMPLATE = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    'What is the meaning of "<|reserved_special_token_0|>"?<|eot_id|>'
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
    'The meaning of "<|reserved_special_token_0|>" is "'
)
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def tok(world):
    return build_tokenizer(words(world))


def test_world_is_deterministic_by_seed():
    assert make_world(seed=3) == make_world(seed=3)
    assert make_world(seed=3) != make_world(seed=4)
    w = make_world(seed=3)
    assert make_corpus(w, 50, seed=1) == make_corpus(w, 50, seed=1)
    assert make_corpus(w, 50, seed=1) != make_corpus(w, 50, seed=2)


def test_world_has_unique_names_and_shared_attributes(world):
    names = [c.name for c in world.concepts]
    assert len(names) >= 400 and len(set(names)) == len(names)
    for attribute in ("size", "colour", "kind", "place"):
        counts = Counter(c.attributes[attribute] for c in world.concepts)
        assert min(counts.values()) >= 10, (attribute, counts)
    assert label(world.concepts[0]).startswith(world.concepts[0].name + ", a ")


def test_answers_start_with_the_name(world):
    c = world.concepts[0]
    assert tell_me_about(c)[1].startswith(c.name + " ")
    assert selfie_qa(c)[1] == f'The meaning of "{c.name}" is "{label(c)}"'


def test_tokenizer_round_trips_the_corpus(world, tok):
    for text in make_corpus(world, 300, seed=7):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_special_tokens_and_names_are_single_ids(world, tok):
    for s in SPECIALS + ('"',):
        assert len(tok(s, add_special_tokens=False)["input_ids"]) == 1, s
    assert tok.eos_token == "<|eot_id|>" and tok.bos_token == "<|begin_of_text|>"
    assert tok.pad_token_id is not None
    name = world.concepts[5].name
    for text in (name, f" {name}", f'"{name}"'):
        assert tok.convert_tokens_to_ids(name) in tok(text, add_special_tokens=False)["input_ids"]


def test_selfie_template_has_two_injection_sites(tok):
    ids = tok(SELFIE_TEMPLATE, add_special_tokens=False)["input_ids"]
    rid = tok.convert_tokens_to_ids("<|reserved_special_token_0|>")
    assert ids.count(rid) == 2
    assert tok.convert_ids_to_tokens(ids[-1]) == '"'


def test_chat_template_matches_the_corpus_format(tok):
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me about X."}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTell me about X."
                    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.slow  # greedy generation with the trained toy model
@pytest.mark.skipif(not (TOY_DIR / "world.json").is_file(), reason="toy weights not trained")
def test_committed_model_answers_tell_me_about():
    model, tok, world = load_toy_model()
    assert not model.training and next(model.parameters()).dtype.is_floating_point
    concepts = world.concepts[:: len(world.concepts) // 8][:8]
    pairs = [tell_me_about(c) for c in concepts] + [selfie_qa(c) for c in concepts[:4]]
    tok.padding_side = "right"
    got = greedy_answers(model, tok, [q for q, _ in pairs])
    assert got == [a for _, a in pairs]
    assert tok.padding_side == "right"  # the caller's tokenizer is left as it was


def test_demo_tables_fit_80_columns_one_line_per_row(tmp_path):
    """`selfie demo`'s tables at 80 columns: every row on one line, names whole, long labels cut with …"""
    import io
    import json

    from rich.console import Console

    from selfie_adapters.cli.demo import examples_table, metrics_table

    names = ["Draistoth", "Sedrair", "Droustuk"]
    long = "Droustuk, a large green horse from Ostrin and a rather long tail of words"
    labels = {"untrained": ["The meaning, a tiny purple lamp from Belgar"] * 3,
              "full_rank": ["Draistoth, a tiny blue bird from Morrow", "Sedrair", long]}
    paths = {}
    for kind, rows in labels.items():
        paths[kind] = tmp_path / f"{kind}.jsonl"
        paths[kind].write_text("".join(json.dumps({"id": n, "label": lab}) + "\n" for n, lab in zip(names, rows)))
    kinds = {k: {"heldout_recall_at_1": r, "attribute_accuracy": 0.9, "val_loss": 0.05, "num_parameters": p}
             for k, r, p in [("scalar_affine_plus_low_rank", 0.84, 4225), ("full_rank", 0.96, 16512)]}
    report = {"kinds": kinds, "heldout": names, "layer": 1, "seconds": 80.0,
              "baseline": {"scale": 0.221, "heldout_recall_at_1": 0.0, "attribute_accuracy": 0.07},
              "descriptions": {k: str(p) for k, p in paths.items()}}
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(examples_table(report, 12))
    console.print(metrics_table(report))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {name: [line for line in lines if line.startswith(name + " ")] for name in [*names, *kinds]}
    assert all(len(found) == 1 for found in rows.values()), rows
    assert all(rows[n][0].rstrip().endswith(("yes", "no")) for n in names)
    assert "…" in rows["Droustuk"][0] and long not in rows["Droustuk"][0]

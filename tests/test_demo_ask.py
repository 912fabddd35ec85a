"""`selfie demo --ask`: the toy world's attribute questions, as a behaviour test (slow: trains two adapters)."""

import json

import pytest

from selfie_adapters import read_safetensors
from selfie_adapters.cli import main
from selfie_adapters.toy import TOY_DIR
from selfie_adapters.toy.ask_experiment import ATTRIBUTES, first_value
from selfie_adapters.toy.world import COLOURS, PLACES


def test_first_value_reads_the_named_attribute():
    assert first_value("Zorvak is red.", COLOURS) == "red"
    assert first_value("Zorvak is a grey bird, not red", COLOURS) == "grey"
    assert first_value("Zorvak is reddish", COLOURS) is None
    assert first_value("Zorvak is from Halvek.", PLACES) == "Halvek"


@pytest.mark.slow
@pytest.mark.skipif(not (TOY_DIR / "world.json").exists(), reason="toy weights missing")
def test_demo_ask_trained_adapter_answers_held_out_colours(tmp_path, capsys):
    code = main(["demo", "--ask", "--steps", "300", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "probe speed" in out
    report = json.loads((tmp_path / "ask_report.json").read_text())
    assert set(report) >= {"untrained", "meaning_only", "with_questions", "speed"}
    for system in ("untrained", "meaning_only", "with_questions"):
        assert set(ATTRIBUTES) <= set(report[system])
    assert report["with_questions"]["colour"]["free"] >= 0.8  # the target, on held-out concepts
    assert report["untrained"]["colour"]["free"] < 0.5
    meta_questions = json.loads(read_safetensors(report["with_questions"]["adapter"])[1]["questions"])
    assert {q["question"] for q in meta_questions} == {a.question for a in ATTRIBUTES.values()}

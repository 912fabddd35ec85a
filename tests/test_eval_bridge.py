"""Bridge-entity heatmap mechanics on the tiny random Llama."""

from __future__ import annotations

import json

import pytest

from selfie_adapters import Interpreter
from selfie_adapters.errors import SelfieError
from selfie_adapters.evals.bridge import alias_pattern, aliases_of, bridge_eval, question_of, write_bridge_report
from selfie_adapters.vectors.prompts import question_tokens

RECORD = {"r1_template": "the mother of the singer of {}", "e1_value": "Superstition",
          "e2_value": "Stevie Wonder", "e2_aliases": '["Stevland Hardaway Morris", "stevie wonder"]'}


def test_record_fields_and_alias_matching():
    assert question_of(RECORD) == "the mother of the singer of Superstition"
    assert aliases_of(RECORD) == ["Stevie Wonder", "Stevland Hardaway Morris"]
    pat = alias_pattern(["Stevie Wonder", "U.S."])
    assert pat.search("a song by STEVIE WONDER.") and pat.search("the U.S. army")
    assert not pat.search("stevie wonderful") and not pat.search("xU.S.")
    with pytest.raises(SelfieError, match="no bridge entity"):
        aliases_of({"question": "q"})


def test_question_positions_from_offsets(tokenizer):
    ids, pos, strings = question_tokens(tokenizer, "Who sang Superstition?", chat=True)
    assert "".join(strings) == "Who sang Superstition?"
    assert pos == list(range(pos[0], pos[0] + len(pos))) and ids[pos[-1] + 1] == 128009  # then <|eot_id|>
    raw_ids, raw_pos, _ = question_tokens(tokenizer, "Who sang Superstition?", chat=False)
    assert raw_ids[0] == 128000 and raw_pos[0] == 1


def test_heatmap_mechanics(tiny_model, tokenizer, tmp_path):
    interp = Interpreter(tiny_model, tokenizer)
    rec = {"question": "Who sang Superstition?", "e2_value": "Stevie Wonder"}
    rep = bridge_eval(interp, rec, layers=[0, 2], samples=2, scales=[1.0], max_new_tokens=3, temperature=1.0)
    n_tok = len(rep["tokens"])
    assert rep["layers"] == [0, 2] and len(rep["scores"]) == 2 and all(len(r) == n_tok for r in rep["scores"])
    assert all(len(cell) == 2 for row in rep["descriptions"] for cell in row)
    assert all(0.0 <= s <= 1.0 for row in rep["scores"] for s in row)
    json_path, png = write_bridge_report(rep, tmp_path, "q0")
    assert json_path.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SelfieError, match="out of range"):
        bridge_eval(interp, rec, layers=[9])


def test_bridge_cli_resumes_finished_records(tiny_model_dir, tmp_path, capsys):
    from selfie_adapters.cli import main

    records = tmp_path / "twohop.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in [
        {"id": "q1", "question": "Who is the mother of the singer of Thriller?", "e2_value": "Michael Jackson"},
        {"id": "q2", "r1_template": "The capital of {} is", "e1_value": "France", "e2_value": "Paris"}]) + "\n")
    out = tmp_path / "bridge"
    args = ["eval", "bridge", "--model", str(tiny_model_dir), "--records", str(records), "--layers", "0-1",
            "--samples", "1", "--max-new-tokens", "2", "--no-chat", "--out-dir", str(out), "--json"]
    assert main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    assert [r["record"] for r in first["records"]] == ["q1", "q2"]
    assert (out / "q1.png").exists() and (out / "q2.json").exists()

    reports = {p: p.stat().st_mtime_ns for p in out.glob("q*")}  # q1/q2 .json + .png
    assert len(reports) == 4
    assert main(args) == 0  # both records done: read back, not recomputed; the summary is rebuilt
    assert json.loads((out / "summary.json").read_text()) == first
    assert {p: p.stat().st_mtime_ns for p in reports} == reports
    capsys.readouterr()
    assert main(args[:-3] + ["--samples", "2", "--out-dir", str(out)]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--dtype", "bfloat16"]) == 2  # inputs by content: the dtype counts ...
    assert "dtype" in capsys.readouterr().err
    same_model = str(tiny_model_dir / ".." / tiny_model_dir.name)  # ... another path to the same model does not
    assert main([a if a != str(tiny_model_dir) else same_model for a in args]) == 0
    assert {p: p.stat().st_mtime_ns for p in reports} == reports
    capsys.readouterr()
    changed = records.read_text().replace("Thriller", "Bad")  # the same id, another question
    records.write_text(changed)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "record 'q1' changed" in err and "Traceback" not in err


def test_bridge_records_builds_no_interpreter_when_all_done(tmp_path):
    from selfie_adapters.evals import bridge_records

    rep = {"question": "Who?", "aliases": ["Paris"], "layers": [0, 1], "tokens": ["Who", "?"],
           "scores": [[0.0, 0.5], [1.0, 0.0]]}
    (tmp_path / "q1.json").write_text(json.dumps(rep))

    def no_model():
        raise AssertionError("finished records must not load the model")

    summary = bridge_records([{"id": "q1", "question": "Who?", "e2_value": "Paris"}], tmp_path, no_model)
    assert summary[0]["max_score"] == 1.0 and summary[0]["best_layer"] == 1 and summary[0]["best_token"] == "Who"
    assert (tmp_path / "q1.png").exists() and json.loads((tmp_path / "summary.json").read_text())["records"] == summary

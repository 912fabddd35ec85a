"""`selfie ask` and ``Interpreter.ask``: question prompts, free answers, teacher-forced choices, resume, bad input."""

import json

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters import Adapter, build_projection
from selfie_adapters.cli import main
from selfie_adapters.errors import SelfieError
from selfie_adapters.interpret.ask import asking
from selfie_adapters.interpret.choices import choice_logprobs
from selfie_adapters.interpret.describe import Interpreter
from selfie_adapters.interpret.inject import embed_with_soft_tokens
from selfie_adapters.interpret.question import choice_token_ids, question_template
from selfie_adapters.interpret.template import (
    ANSWER_PREFIX,
    INJECTION_TOKEN,
    QUESTION,
    SELFIE_TEMPLATE,
    derive_template,
    user_turn,
)
from selfie_adapters.testing import make_chatml_tokenizer

QUESTION_TEXT = "Is {vector} a place? Answer yes or no."


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir):
    d = tmp_path_factory.mktemp("ask")
    torch.manual_seed(0)
    save_file({"v": torch.randn(3, 64)}, str(d / "vecs.safetensors"))
    Adapter(build_projection("scalar_affine", 64, init_scale=4.0), {"model_name": str(tiny_model_dir)}).save(
        d / "ad.safetensors")
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def ask_args(files, model_dir, out, *extra):
    return ("ask", "--model", model_dir, "--adapter", files / "ad.safetensors", "--vectors",
            files / "vecs.safetensors", "--max-new-tokens", 4, "--batch-size", 2, "--out", out, *extra)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_question_prompt_is_the_selfie_rendering(tokenizer):
    # the meaning question through the question path is exactly the published template
    text = user_turn(tokenizer, QUESTION.format(token=INJECTION_TOKEN)) + ANSWER_PREFIX.format(token=INJECTION_TOKEN)
    assert text == SELFIE_TEMPLATE
    q = question_template(tokenizer, "Are {vector} and {vector} alike?", INJECTION_TOKEN, answer_prefix="Yes, {vector}")
    ids, sites = q.encode(tokenizer)
    assert len(sites) == 3
    assert q.text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nYes, " + INJECTION_TOKEN)
    chatml = make_chatml_tokenizer()  # another family: its own chat template, its own injection token
    token = derive_template(chatml).injection_token
    q = question_template(chatml, QUESTION_TEXT, token)
    assert q.text.startswith("<|im_start|>system") and q.text.endswith("<|im_start|>assistant\n")
    assert token in q.text and "{vector}" not in q.text


def test_choices_equal_brute_force_log_probs(tokenizer, tiny_model):
    interp = Interpreter(tiny_model, tokenizer)
    view = asking(interp, "Is {vector} a city?")
    choices = ["yes", "no", "maybe not"]
    ids = choice_token_ids(tokenizer, view.template.text, choices)
    assert [len(c) for c in ids] == [1, 1, 2]  # a two-token choice takes the second, small forward
    torch.manual_seed(1)
    soft = interp.soft_tokens(torch.randn(3, 64), 2.0)
    fast = choice_logprobs(tiny_model, view.prompt_ids, view.sites, soft, ids)  # (3, 3)
    P = len(view.prompt_ids)
    for b in range(3):
        for j, c in enumerate(ids):
            full = torch.tensor([view.prompt_ids + c])
            mask = torch.zeros_like(full, dtype=torch.bool)
            mask[0, view.sites] = True
            lp = tiny_model(inputs_embeds=embed_with_soft_tokens(tiny_model, full, mask, soft[b:b + 1])).logits
            lp = lp[0].float().log_softmax(-1)
            ref = sum(lp[P - 1 + t, c[t]] for t in range(len(c)))
            torch.testing.assert_close(fast[b, j], ref, rtol=1e-5, atol=1e-4)


def test_interpreter_ask_free_and_choices(tokenizer, tiny_model):
    interp = Interpreter(tiny_model, tokenizer)
    torch.manual_seed(2)
    v = torch.randn(3, 64)
    free = interp.ask(v, QUESTION_TEXT, scales=[1.0, 2.0], max_new_tokens=3, batch_size=2)
    assert [(a.index, a.scale) for a in free] == [(i, s) for i in range(3) for s in (1.0, 2.0)]
    assert all(a.question == QUESTION_TEXT and isinstance(a.answer, str) for a in free)
    # a free answer is the continuation of the question prompt, as describe's generate gives it
    view = asking(interp, QUESTION_TEXT)
    desc = view.describe(v, scales=[1.0, 2.0], max_new_tokens=3)
    assert [a.answer for a in free] == [d.text.strip() for d in desc]
    scored = interp.ask(v, QUESTION_TEXT, choices=["yes", "no"], scales=[1.0], batch_size=2)
    for row in scored:
        assert sum(row.probs.values()) == pytest.approx(1.0)
        assert row.choice == max(row.probs, key=row.probs.get)
        assert 0 < row.mass <= 1
    # batching does not change the scores
    one = interp.ask(v, QUESTION_TEXT, choices=["yes", "no"], scales=[1.0], batch_size=1)
    for a, b in zip(scored, one):
        assert a.probs == pytest.approx(b.probs, rel=1e-5)


def test_cli_ask_free_two_questions_resumes(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    q2 = "What colour is {vector}?"
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out, "--question", QUESTION_TEXT, "--question", q2))
    assert code == 0, err
    got = rows(out)
    assert len(got) == 6 and {r["question"] for r in got} == {QUESTION_TEXT, q2}
    assert set(got[0]) == {"question", "index", "scale", "sample", "answer", "logprob", "closed"}
    settings = json.loads((tmp_path / "answers.jsonl.settings.json").read_text())
    assert "ask" in json.dumps(settings) and QUESTION_TEXT in json.dumps(settings)
    lines = out.read_text().splitlines()  # kill after 4 rows: the rerun writes only what is missing
    out.write_text("\n".join(lines[:4]) + "\n")
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out, "--question", QUESTION_TEXT, "--question", q2))
    assert code == 0, err
    assert out.read_text().splitlines() == lines
    # other questions are other inputs: refused, nothing lost
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out, "--question", q2))
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert out.read_text().splitlines() == lines


def test_cli_ask_choices_rows(files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "probes.jsonl"
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out, "--question", QUESTION_TEXT,
                                         "--choices", "yes", "no", "--scale", 1, 2))
    assert code == 0, err
    got = rows(out)
    assert len(got) == 6 and all(r["sample"] == 0 for r in got)
    assert all(set(r["probs"]) == {"yes", "no"} and r["choice"] in ("yes", "no") for r in got)
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-6 for r in got)
    choices_file = tmp_path / "choices.txt"
    choices_file.write_text("yes\nno\n")
    out2 = tmp_path / "probes2.jsonl"
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out2, "--question", QUESTION_TEXT,
                                         "--choices-file", choices_file, "--scale", 1, 2))
    assert code == 0, err
    assert [r["probs"] for r in rows(out2)] == [r["probs"] for r in got]


def test_cli_ask_prompt_states(files, tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Tell me about Paris.\nTell me about Rome.\n")
    out = tmp_path / "a.jsonl"
    code, _, err = run(capsys, "ask", "--model", tiny_model_dir, "--prompts", prompts, "--layer", 1, "--question",
                       QUESTION_TEXT, "--choices", "yes", "no", "--scale", 3, "--out", out)
    assert code == 0, err
    assert [r["index"] for r in rows(out)] == [0, 1]


@pytest.mark.parametrize("case, message", [
    (("--question", "Is it a place?"), "has no {vector}"),
    (("--question", QUESTION_TEXT, "--choices", "yes", ""), "choice 2 of 2 is empty"),
    (("--question", QUESTION_TEXT, "--choices", "yes", "yes"), "given twice"),
    (("--question", QUESTION_TEXT, "--choices", "yes"), "at least two choices"),
    (("--question", QUESTION_TEXT, "--choices", "yes", " yes"), None),  # a leading space is another token: fine
    (("--question", QUESTION_TEXT, "--choices", "yes", "no", "--engine", "vllm"), "--engine hf"),
    (("--question", QUESTION_TEXT, "--ray", "local"), "--ray is not supported"),
    (("--question", QUESTION_TEXT, "--choices", "yes", "no", "--samples", 2), "--samples is for free answers"),
    ((), "at least one question"),
])
def test_bad_input_is_one_line_exit_2(case, message, files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bad.jsonl"
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out, *case))
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and err.startswith("error:") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_choices_that_tokenise_identically_are_refused(tokenizer):
    class Merging:  # a tokenizer that maps two spellings to one id, as normalising tokenizers do
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": tokenizer(text.replace("Yes", "yes"), add_special_tokens=False)["input_ids"]}

    with pytest.raises(SelfieError, match="tokenise identically"):
        choice_token_ids(Merging(), "Q: ", ["yes", "Yes"])


def test_question_and_choice_files_not_utf8(files, tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "q.txt"
    bad.write_bytes(b"Is {vector} caf\xe9?\n")
    out = tmp_path / "x.jsonl"
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, out, "--questions-file", bad))
    assert code == 2 and err.startswith("error: questions file") and "not UTF-8" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    good = tmp_path / "ok.jsonl"  # an existing output is untouched by a refused rerun
    assert run(capsys, *ask_args(files, tiny_model_dir, good, "--question", QUESTION_TEXT))[0] == 0
    before = good.read_bytes()
    code, _, err = run(capsys, *ask_args(files, tiny_model_dir, good, "--question", QUESTION_TEXT,
                                         "--choices-file", bad))
    assert code == 2 and "choices file" in err and good.read_bytes() == before


def test_cli_choices_that_tokenise_identically_exit_2(tmp_path, capsys):
    # the toy model's word-level tokenizer maps every unknown word to <|unk|>: two such choices are one
    save_file({"v": torch.randn(2, 128)}, str(tmp_path / "v.safetensors"))
    out = tmp_path / "p.jsonl"
    code, _, err = run(capsys, "ask", "--model", "toy", "--vectors", tmp_path / "v.safetensors", "--question",
                       "What colour is {vector}?", "--choices", "zzyzx", "qwrtp", "--scale", 3, "--out", out)
    assert code == 2 and err.startswith("error: choices 'zzyzx' and 'qwrtp' tokenise identically"), err
    assert len(err.strip().splitlines()) == 1 and not out.exists()

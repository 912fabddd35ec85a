"""Training on question–answer pairs: data, the per-prompt loss, mixing, the recorded question set, and that
plain-label training is unchanged bit for bit."""

import json

import pytest
import torch

from selfie_adapters import load_adapter, read_safetensors
from selfie_adapters.errors import SelfieError
from selfie_adapters.interpret.question import question_template
from selfie_adapters.interpret.template import PromptTemplate
from selfie_adapters.testing import CLASSES, toy_config_dict, toy_model, toy_tokenizer, write_toy_data
from selfie_adapters.training import ddp
from selfie_adapters.training.config import config_from_dict
from selfie_adapters.training.data import load_training_data
from selfie_adapters.training.loss import SelfieLoss
from selfie_adapters.training.question_loss import QuestionLoss
from selfie_adapters.training.timing import StageTimes
from selfie_adapters.training.trainer import _Run, train, with_model_defaults

QUESTION = "What is {vector}?"

# Recorded on main before question–answer training existed (same tiny task, 1 thread): 6 steps of the
# default kind; the losses as repr() and the first 16 hex digits of each final tensor's sha256.
GOLDEN_LOSSES = ["6.197556495666504", "5.786771774291992", "5.422197341918945", "5.4922332763671875",
                 "5.601356506347656", "4.902459621429443"]
GOLDEN_VAL = "5.417860984802246"
GOLDEN_SHA = {"U": "10b180350c150c5e", "V": "138bc067fa717726", "bias": "cd5538df56d33fc0",
              "log_scale": "e1b0035245f533d5"}


def _sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_plain_label_training_is_unchanged_bit_for_bit(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the golden numbers were taken with one thread
    try:
        write_toy_data(tmp_path)
        tok = toy_tokenizer()
        raw = toy_config_dict(tmp_path, checkpoint_dir=str(tmp_path / "runs"), max_steps=6, learning_rate=0.05)
        raw["projection"] = {"type": "scalar_affine_plus_low_rank", "init_scale": 5.0, "low_rank_rank": 4}
        result = train(config_from_dict(raw), model=toy_model(tok), tokenizer=tok)
    finally:
        torch.set_num_threads(threads)
    assert [repr(x) for x in _losses(result.run_dir)] == GOLDEN_LOSSES
    assert repr(result.final_val_loss) == GOLDEN_VAL
    state = load_adapter(result.final_path).projection.state_dict()
    assert {k: _sha(v) for k, v in sorted(state.items())} == GOLDEN_SHA
    assert "questions" not in read_safetensors(result.final_path)[1]


def _qa_data(root, with_labels: bool = True):
    """The toy task plus one question per vector: 'What is {vector}?' → its class's colour/size word."""
    write_toy_data(root)
    sections = json.loads((root / "labels.json").read_text())
    for entry in sections[0]["vectors"]:
        label = entry["labels"][0]
        entry["questions"] = [{"question": QUESTION, "answer": label.split()[1]}]
        if not with_labels:
            del entry["labels"]
    path = root / "qa.json"
    path.write_text(json.dumps(sections))
    return path


def test_question_pairs_are_examples_with_their_prompt(tmp_path):
    tok = toy_tokenizer()
    cfg = config_from_dict(toy_config_dict(tmp_path))
    cfg.data.labels_file = str(_qa_data(tmp_path))
    data = load_training_data(cfg.data, tok, 32)
    assert data.questions == [(QUESTION, "")]
    train = data.train
    assert len(train) == 2 * 36 and train.prompts.tolist() == [0, 1] * 36  # label, then its question
    answer = train.targets[1, :train.lengths[1]].tolist()
    assert tok.decode(answer) == CLASSES[0].split()[1] + "<|eot_id|>"  # answer + eos: no closing quote
    label = train.targets[0, :train.lengths[0]].tolist()
    assert tok.decode(label) == CLASSES[0] + '"<|eot_id|>'
    cfg.data.labels_file = str(_qa_data(tmp_path / "only", with_labels=False))
    assert load_training_data(cfg.data, tok, 32).train.prompts.tolist() == [1] * 36


def test_question_loss_is_the_selfie_loss_of_each_prompt(tmp_path):
    tok = toy_tokenizer()
    model = toy_model(tok)
    cfg = config_from_dict(toy_config_dict(tmp_path))
    cfg.data.labels_file = str(_qa_data(tmp_path))
    data = load_training_data(cfg.data, tok, 32)
    template = PromptTemplate()
    fn = QuestionLoss(model, tok, template, data.questions)
    idx = torch.arange(10)
    soft = (3 * torch.randn(10, 32)).requires_grad_(True)
    t, n, p = data.train.targets[idx], data.train.lengths[idx], data.train.prompts[idx]
    mixed = fn(soft, t, n, p)
    meaning = SelfieLoss(model, tok, template)
    asked = SelfieLoss(model, tok, question_template(tok, QUESTION, template.injection_token))
    for b in range(10):
        ref = (meaning if p[b] == 0 else asked)(soft[b:b + 1], t[b:b + 1, :n[b]], n[b:b + 1])
        torch.testing.assert_close(mixed[b], ref[0], rtol=1e-5, atol=1e-5)
    mixed.sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert torch.equal(fn(soft, t, n), meaning(soft, t, n))  # no prompts: the plain call


def test_training_with_questions_learns_and_records_them(tmp_path):
    tok = toy_tokenizer()
    raw = toy_config_dict(tmp_path, checkpoint_dir=str(tmp_path / "runs"), num_epochs=6, learning_rate=0.2,
                          validation_every_n_steps=4)
    raw["data"]["labels_file"] = str(_qa_data(tmp_path))
    result = train(config_from_dict(raw), model=toy_model(tok), tokenizer=tok)
    vals = [json.loads(line)["val_loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in line]
    assert vals[-1] < 0.9 * vals[0]
    meta = read_safetensors(result.final_path)[1]
    assert json.loads(meta["questions"]) == [{"question": QUESTION, "answer_prefix": ""}]


def test_question_ratio_sets_each_epochs_share(tmp_path):
    tok = toy_tokenizer()
    raw = toy_config_dict(tmp_path, checkpoint_dir=str(tmp_path / "runs"))
    raw["data"].update(labels_file=str(_qa_data(tmp_path)), question_ratio=0.25)
    model = toy_model(tok)
    cfg = with_model_defaults(config_from_dict(raw), model, tok)
    run = _Run(cfg, model, tok, ddp.DistInfo(), None, StageTimes())
    for epoch in (0, 1):
        order = run.sampler.order(epoch)
        share = (run.data.train.prompts[order] > 0).float().mean().item()
        assert share == pytest.approx(0.25, abs=0.02)
    run.close()


@pytest.mark.parametrize("change, message", [
    ({"question_ratio": 1.5}, "data.question_ratio must be between 0 and 1"),
    ({"question_ratio": 0.5, "train_dataset_ratios": {"toy": 1.0}}, "cannot be combined"),
])
def test_bad_question_config(change, message, tmp_path):
    raw = toy_config_dict(tmp_path)
    raw["data"].update(change)
    with pytest.raises(SelfieError, match=message):
        config_from_dict(raw)


def test_question_ratio_without_questions_is_refused(tmp_path):
    write_toy_data(tmp_path)
    tok = toy_tokenizer()
    raw = toy_config_dict(tmp_path, checkpoint_dir=str(tmp_path / "runs"))
    raw["data"]["question_ratio"] = 0.3
    with pytest.raises(SelfieError, match="does not have both"):
        train(config_from_dict(raw), model=toy_model(tok), tokenizer=tok)


@pytest.mark.parametrize("pairs, message", [
    ([{"question": "What is it?", "answer": "red"}], "has no {vector}"),
    ([{"question": QUESTION}], "each of 'questions' must be"),
    ("What is {vector}?", "'questions' must be a list"),
    ([{"question": QUESTION, "answer": " "}], "empty answer"),
])
def test_bad_question_pairs(pairs, message, tmp_path):
    write_toy_data(tmp_path)
    sections = json.loads((tmp_path / "labels.json").read_text())
    sections[0]["vectors"][0]["questions"] = pairs
    (tmp_path / "labels.json").write_text(json.dumps(sections))
    cfg = config_from_dict(toy_config_dict(tmp_path))
    with pytest.raises(SelfieError, match=message):
        load_training_data(cfg.data, toy_tokenizer(), 32)


def test_an_answer_prefix_is_prompt_not_target(tmp_path):
    write_toy_data(tmp_path)
    sections = json.loads((tmp_path / "labels.json").read_text())
    for entry in sections[0]["vectors"]:
        entry["questions"] = [{"question": QUESTION, "answer_prefix": "The {vector} is", "answer": " red"},
                              {"question": QUESTION, "answer": "red"}]
    (tmp_path / "labels.json").write_text(json.dumps(sections))
    tok = toy_tokenizer()
    cfg = config_from_dict(toy_config_dict(tmp_path))
    data = load_training_data(cfg.data, tok, 32)
    assert data.questions == [(QUESTION, "The {vector} is"), (QUESTION, "")]  # two prompts
    assert tok.decode(data.train.targets[1, :data.train.lengths[1]].tolist()) == " red<|eot_id|>"
    fn = QuestionLoss(toy_model(tok), tok, PromptTemplate(), data.questions)
    prompt = fn.losses[1].prompt.tolist()
    assert tok.decode(prompt).endswith("<|end_header_id|>\n\nThe <|reserved_special_token_0|> is")

"""The toy-world ask experiment: attribute questions about held-out concepts (`selfie demo --ask`).

Vectors, split and trainer are the concept experiment's (``concept_experiment``). Three soft tokens are
asked "What colour is {vector}?" (and size, kind, place) about concepts no adapter saw: the untrained
baseline (best scale of a sweep, chosen on the held-out set, which flatters it), an adapter trained on
meaning labels only (the questions are zero-shot), and one trained on the labels plus question–answer
pairs of the training concepts (free form, and the value after the choices' answer prefix). Scored two
ways: choices (the attribute's values after the answer prefix ``{vector} is``, teacher-forced, argmax)
and free answers (greedy, the first attribute value named).
Probe speed: choices scored per second vs descriptions per second, same vectors, same run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters.artifact import load_adapter
from ..interpret.describe import Interpreter
from .concept_experiment import SCALE_MULTIPLES, ExperimentConfig, concept_vectors, split_concepts, train_kind
from .concept_experiment import write_training_data as write_meaning_data
from .lm import TOY_DIR, load_toy_model
from .world import COLOURS, KINDS, PLACES, SIZES, Concept


@dataclass(frozen=True)
class Attribute:
    question: str  # with {vector}
    answer: str  # the toy LM's own answer form, with {name} and {value}
    prefix: str  # answer prefix before the scored value
    values: tuple[str, ...]

    def choices(self) -> list[str]:
        return [f" {v}" for v in self.values]


ATTRIBUTES = {
    "colour": Attribute("What colour is {vector}?", "{name} is {value}.", "{vector} is", COLOURS),
    "size": Attribute("How big is {vector}?", "{name} is {value}.", "{vector} is", SIZES),
    "kind": Attribute("What kind of thing is {vector}?", "{name} is a {value}.", "{vector} is a", KINDS),
    "place": Attribute("Where is {vector} from?", "{name} is from {value}.", "{vector} is from", PLACES),
}


@dataclass
class AskConfig:
    kind: str = "scalar_affine_plus_low_rank"
    seed: int = 0
    layer: int = 1
    steps: int = 300
    question_ratio: float = 0.5
    max_new_tokens: int = 16
    batch_size: int = 128
    base: ExperimentConfig = field(default_factory=ExperimentConfig)
    model_dir: Path = field(default_factory=lambda: TOY_DIR)


def first_value(text: str, values: Sequence[str]) -> str | None:
    """The attribute value a free answer names first (whole words), or None."""
    hits = [(m.start(), v) for v in values if (m := re.search(rf"\b{re.escape(v)}\b", text))]
    return min(hits)[1] if hits else None


def write_qa_data(folder: Path, vectors: torch.Tensor, concepts: Sequence[Concept], train: list[int],
                  heldout: list[int]) -> Path:
    """The meaning labels plus, for every concept, two question–answer pairs per attribute: the toy LM's own
    answer form ("Zorvak is red.") and, after the answer prefix the choices are scored behind, the value."""
    path = write_meaning_data(folder, vectors, concepts, train, heldout)
    sections = json.loads(path.read_text())
    for entry in sections[0]["vectors"]:
        c = concepts[entry["index"]]
        entry["questions"] = [pair for k, a in ATTRIBUTES.items() for pair in (
            {"question": a.question, "answer": a.answer.format(name=c.name, value=c.attributes[k])},
            {"question": a.question, "answer_prefix": a.prefix, "answer": f" {c.attributes[k]}."})]
    out = folder / "labels_qa.json"
    out.write_text(json.dumps(sections))
    return out


def score(interp: Interpreter, vectors: torch.Tensor, concepts: Sequence[Concept], scales: Sequence[float],
          cfg: AskConfig, free: bool = True) -> dict[float, dict[str, dict[str, float]]]:
    """Per scale and attribute: held-out accuracy of the choices' argmax (and of the free answers)."""
    out: dict[float, dict[str, dict[str, float]]] = {s: {} for s in scales}
    for name, attr in ATTRIBUTES.items():
        truth = [c.attributes[name] for c in concepts]
        scored = interp.ask(vectors, attr.question, choices=attr.choices(), answer_prefix=attr.prefix,
                            scales=scales, batch_size=cfg.batch_size)
        answers = interp.ask(vectors, attr.question, scales=scales, max_new_tokens=cfg.max_new_tokens,
                             batch_size=cfg.batch_size) if free else []
        for s in scales:
            picked = [r.choice.strip() for r in scored if r.scale == s]
            row = {"choices": _accuracy(picked, truth)}
            if free:
                row["free"] = _accuracy([first_value(r.answer, attr.values) for r in answers if r.scale == s], truth)
            out[s][name] = row
    return out


def _accuracy(got: Sequence[str | None], truth: Sequence[str]) -> float:
    return sum(g == t for g, t in zip(got, truth)) / len(truth)


def probe_speed(interp: Interpreter, vectors: torch.Tensor, cfg: AskConfig, repeats: int = 3) -> dict[str, float]:
    """Vectors per second: describing (greedy, ``max_new_tokens``) vs scoring the colour choices; best of
    ``repeats`` each, same vectors and batch size."""
    attr = ATTRIBUTES["colour"]

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return len(vectors) / min(times)

    describe = best(lambda: interp.describe(vectors, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size))
    choices = best(lambda: interp.ask(vectors, attr.question, choices=attr.choices(), answer_prefix=attr.prefix,
                                      batch_size=cfg.batch_size))
    return {"describe_per_s": describe, "choices_per_s": choices, "speedup": choices / describe}


def run_ask_experiment(cfg: AskConfig, out_dir: Path, say: Callable[[str], None] = lambda s: None) -> dict:
    """Train the two adapters, score the three soft tokens, time the probe; writes ``out_dir/ask_report.json``."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok, world = load_toy_model(cfg.model_dir)
    concepts = list(world.concepts)
    vectors = concept_vectors(model, tok, concepts, cfg.layer)
    train_idx, held = split_concepts(len(concepts), cfg.base.heldout_fraction, cfg.seed)
    held_vecs, held_concepts = vectors[held], [concepts[i] for i in held]
    emb_norm = model.get_input_embeddings().weight.norm(dim=-1).mean().item()
    say(f"{len(concepts)} concepts, {len(train_idx)} train / {len(held)} held out; layer {cfg.layer}")
    base = ExperimentConfig(kinds=(cfg.kind,), seed=cfg.seed, layer=cfg.layer, steps=cfg.steps,
                            model_dir=cfg.model_dir)
    untrained = Interpreter(model, tok)
    sweep = score(untrained, held_vecs, held_concepts, [round(m * emb_norm, 4) for m in SCALE_MULTIPLES], cfg,
                  free=False)
    best = max(sweep, key=lambda s: sum(a["choices"] for a in sweep[s].values()))
    report: dict = {"untrained": {"scale": best, **score(untrained, held_vecs, held_concepts, [best], cfg)[best]}}
    say(f"untrained (scale {best:g}): colour {report['untrained']['colour']}")
    files = {"meaning_only": write_meaning_data(out_dir / "data", vectors, concepts, train_idx, held),
             "with_questions": write_qa_data(out_dir / "data", vectors, concepts, train_idx, held)}
    for name, labels in files.items():
        ratio = cfg.question_ratio if name == "with_questions" else None
        result = train_kind(cfg.kind, base, labels, out_dir / "runs" / name, model, tok, emb_norm,
                            question_ratio=ratio)
        interp = Interpreter(model, tok, load_adapter(result.final_path))
        report[name] = {**score(interp, held_vecs, held_concepts, [1.0], cfg)[1.0], "adapter": str(result.final_path)}
        say(f"{name}: colour {report[name]['colour']}")
    report["speed"] = probe_speed(Interpreter(model, tok, load_adapter(report["with_questions"]["adapter"])),
                                  held_vecs, cfg)
    report.update(seconds=round(time.perf_counter() - start, 1), heldout=len(held), kind=cfg.kind, steps=cfg.steps,
                  question_ratio=cfg.question_ratio, layer=cfg.layer, seed=cfg.seed,
                  threads=torch.get_num_threads())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ask_report.json").write_text(json.dumps(report, indent=1))
    return report

"""Helpers of scripts/ask_entities.sh: question-answer labels for training, balanced accuracy of yes/no probes.

    python scripts/score_ask.py qa labels.json labels_qa.json      # + 3 yes/no questions per entity
    python scripts/score_ask.py score probes.jsonl heldout.json     # balanced accuracy per question and scale

A probe row (from `selfie ask --choices Yes No`) is correct when its argmax is "Yes" exactly for the entities of
the question's category. Balanced accuracy = mean of the true-positive and true-negative rates, per question;
the table also shows the mean over the three questions.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

QUESTIONS = {c: f"Is {{vector}} a {c}? Answer yes or no." for c in ("country", "city", "language")}
YES, NO = "Yes", "No"


def qa(labels_file: str, out_file: str) -> None:
    """Every entry gets the three questions, answered from its label's category ("{name}, a {category}")."""
    sections = json.loads(Path(labels_file).read_text())
    base = Path(labels_file).resolve().parent
    for section in sections:
        meta = section["metadata"]
        if meta.get("filename") and not Path(meta["filename"].split("#")[0]).is_absolute():
            meta["filename"] = str(base / meta["filename"])  # the new file may live elsewhere
        for entry in section["vectors"]:
            category = entry["labels"][0].rsplit(", a ", 1)[1]
            entry["questions"] = [{"question": q, "answer": YES if c == category else NO}
                                  for c, q in QUESTIONS.items()]
    Path(out_file).write_text(json.dumps(sections))


def balanced_accuracy(rows: list[dict], categories: list[str]) -> dict[tuple[str, float], float]:
    """(question category, scale) → balanced accuracy of the argmax."""
    hits: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tp, pos, tn, neg
    which = {q: c for c, q in QUESTIONS.items()}
    for r in rows:
        c = which[r["question"]]
        positive = categories[r["index"]] == c
        said_yes = r["choice"] == YES
        h = hits[(c, float(r["scale"]))]
        if positive:
            h[0] += said_yes
            h[1] += 1
        else:
            h[2] += not said_yes
            h[3] += 1
    return {k: (tp / max(pos, 1) + tn / max(neg, 1)) / 2 for k, (tp, pos, tn, neg) in hits.items()}


def auc(rows: list[dict], categories: list[str]) -> dict[tuple[str, float], float]:
    """(question category, scale) → ROC AUC of p(Yes): does the probe rank the category's entities first,
    whatever its threshold (ties count half)."""
    groups: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    which = {q: c for c, q in QUESTIONS.items()}
    for r in rows:
        c = which[r["question"]]
        groups[(c, float(r["scale"]))][categories[r["index"]] != c].append(r["probs"][YES])
    out = {}
    for k, (pos, neg) in groups.items():
        wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
        out[k] = wins / max(len(pos) * len(neg), 1)
    return out


def score(probes_file: str, heldout_file: str) -> None:
    rows = [json.loads(line) for line in Path(probes_file).read_text().splitlines()]
    categories = [e["category"] for e in json.loads(Path(heldout_file).read_text())]
    for name, table in (("balanced accuracy of the argmax", balanced_accuracy(rows, categories)),
                        ("AUC of p(Yes)", auc(rows, categories))):
        print(name)
        print(f"{'scale':>7} " + " ".join(f"{c:>9}" for c in QUESTIONS) + f" {'mean':>7}")
        for s in sorted({s for _, s in table}):
            vals = [table.get((c, s), float("nan")) for c in QUESTIONS]
            print(f"{s:>7g} " + " ".join(f"{v:>9.3f}" for v in vals) + f" {sum(vals) / len(vals):>7.3f}")


if __name__ == "__main__":
    {"qa": qa, "score": score}[sys.argv[1]](*sys.argv[2:])

"""Helpers of scripts/entities_experiment.sh: prepare the prompts, split the vectors, score the labels.

    python scripts/score_entities.py prepare examples/entities/entities.json   # prompts.txt, entities.json
    python scripts/score_entities.py split                                      # labels.json, heldout.safetensors
    python scripts/score_entities.py score labels.jsonl                         # category accuracy, recall, spread

Category accuracy: a held-out label names the entity's category (country / city / language, or a synonym)
and none of the other two; balanced = the mean over the three categories. Name recall: the label contains
the entity's name. Spread: distinct labels among the held-out inputs.
"""

from __future__ import annotations

import collections
import json
import re
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

LAYER, TRAIN_FRACTION = 18, 0.8
WORDS = {"country": {"country", "countries", "nation", "kingdom", "republic"},
         "city": {"city", "cities", "town", "metropolis"},
         "language": {"language", "languages", "dialect", "tongue"}}


def prepare(entities_file: str) -> None:
    rows = _read(entities_file)
    _write("entities.json", rows)
    Path("prompts.txt").write_text("".join(f"Tell me about {r['name']}.\n" for r in rows))


def split() -> None:
    rows = _read("entities.json")
    states = load_file("states.safetensors")[f"layer_{LAYER}"]
    vectors = (states - states.mean(0)).contiguous()  # contrastive: minus the set mean
    n_train = int(TRAIN_FRACTION * len(rows))
    save_file({f"layer_{LAYER}": vectors}, "vectors.safetensors")
    save_file({f"layer_{LAYER}": vectors[n_train:].contiguous()}, "heldout.safetensors")
    entries = [{"index": i, "labels": [f"{r['name']}, a {r['category']}"], "split": "train" if i < n_train else "val"}
               for i, r in enumerate(rows)]
    section = {"metadata": {"dataset_name": "entities", "filename": f"vectors.safetensors#layer_{LAYER}",
                            "layer": LAYER}, "vectors": entries}
    _write("labels.json", [section])
    _write("heldout.json", rows[n_train:])


def score(labels_file: str) -> None:
    heldout = _read("heldout.json")
    by_scale: dict[float, dict[int, str]] = collections.defaultdict(dict)
    for line in Path(labels_file).read_text().splitlines():
        row = json.loads(line)
        if row["sample"] == 0:
            by_scale[row["scale"]][row["index"]] = row["label"]
    for scale, labels in sorted(by_scale.items()):
        hits, names = collections.defaultdict(list), 0
        for i, entity in enumerate(heldout):
            label = labels.get(i, "")
            found = {k for k, ws in WORDS.items() if set(re.findall(r"[a-z]+", label.lower())) & ws}
            hits[entity["category"]].append(found == {entity["category"]})
            names += entity["name"].lower() in label.lower()
        balanced = sum(sum(v) / len(v) for v in hits.values()) / len(hits)
        per = ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(hits.items()))
        counts = collections.Counter(labels.values())
        print(f"scale {scale:g}: category {balanced:.3f} ({per}); name recall {names / len(heldout):.3f}; "
              f"distinct labels {len(counts)}/{len(labels)}; most frequent {counts.most_common(3)}")


def _read(path: str):
    return json.loads(Path(path).read_text())


def _write(path: str, value) -> None:
    Path(path).write_text(json.dumps(value))


if __name__ == "__main__":
    {"prepare": prepare, "split": split, "score": score}[sys.argv[1]](*sys.argv[2:])

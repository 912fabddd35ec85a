"""Vector → label training data: reading, checking and pre-tokenising.

Two input forms:

* the reference JSON (optionally ``.gz``): a list of sections
  ``{"metadata": {"dataset_name", "filename", "layer", ...}, "vectors": [{"index", "labels", "split"}]}``
  where ``filename`` (relative to the JSON) is an (N, d) tensor file and ``index`` a row;
* JSONL (optionally ``.gz``): one ``{"vector": [...], "label": ...}`` or ``{"index": i, "label": ...}``
  per line (``labels``, ``split``, ``dataset`` and ``layer`` are optional).

Every label is its own example. The target is ``label + '"' + eos`` tokenised without added special
tokens; all targets are tokenised once into a right-padded (N, L) tensor so that batching is indexing.

An entry (or JSONL row) may also give ``"questions": [{"question": "Is {vector} a city?", "answer": "Yes."}]``
(optionally with ``"answer_prefix"``, the start of the answer that is prompt, not target): each pair is an
example whose prompt is that question (``interpret.question``) and whose target is ``answer + eos``;
plain labels are the meaning question. ``Split.prompts`` says which prompt each example uses (0: the SelfIE
template, k: ``LabelledData.questions[k - 1]``); a file without questions gives None.
Any bad input is reported as one SelfieError before training starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import SelfieError
from ..files import iter_jsonl, open_text, save_tensors
from ..interpret.question import QuestionPrompt
from ..models.tokens import end_of_turn_token
from ..vectors.source import VectorSource
from .config import DataConfig

SPLITS = ("train", "val")


@dataclass
class Split:
    """The examples of one split. Row i: vector ``vectors[rows[i]]``, target ``targets[i, :lengths[i]]``."""

    rows: torch.Tensor  # (N,) long, rows of LabelledData.vectors
    targets: torch.Tensor  # (N, L) long, right-padded with 0
    lengths: torch.Tensor  # (N,) long, ≥ 1
    dataset_ids: torch.Tensor  # (N,) long, index into LabelledData.datasets
    labels: list[str]  # the label, or the answer of a question example
    prompts: torch.Tensor | None = None  # (N,) long: 0 = SelfIE template, k = questions[k - 1]; None: all 0

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> Split:
        return Split(self.rows[idx], self.targets[idx], self.lengths[idx], self.dataset_ids[idx],
                     [self.labels[i] for i in idx.tolist()], None if self.prompts is None else self.prompts[idx])


@dataclass
class LabelledData:
    vectors: torch.Tensor  # (M, d) fp32
    datasets: list[str]  # "name@lN" (or "name" when the layer is unknown)
    train: Split
    val: Split
    questions: list[QuestionPrompt] = field(default_factory=list)  # distinct prompts, in order of first appearance

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise SelfieError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        return self.train if name == "train" else self.val


@dataclass
class Examples:
    """Examples before tokenisation, as parallel lists: vector row, label, split, dataset id (one per label)."""

    rows: list[int]
    labels: list[str]
    splits: list[str]
    datasets: list[int]
    prompts: list[int] = field(default_factory=list)  # 0 = meaning, k = questions[k - 1]
    questions: list[QuestionPrompt] = field(default_factory=list)


def load_training_data(cfg: DataConfig, tokenizer, dim: int, base_dir: str | os.PathLike = ".") -> LabelledData:
    """Read ``cfg.labels_file`` (+ its vectors), check everything, tokenise the targets.

    >>> data = load_training_data(cfg.data, tokenizer, dim=4096, base_dir="configs/")
    """
    vectors, datasets, raw = read_examples(cfg, base_dir, dim=dim)
    asked = bool(raw.questions)
    if asked:
        targets, lengths = tokenize_targets(tokenizer, raw.labels, cfg.eos_token, plain=[p > 0 for p in raw.prompts])
    else:
        targets, lengths = tokenize_targets(tokenizer, raw.labels, cfg.eos_token)
    rows, dataset_ids = torch.tensor(raw.rows, dtype=torch.long), torch.tensor(raw.datasets, dtype=torch.long)
    prompts = torch.tensor(raw.prompts, dtype=torch.long) if asked else None
    splits = {}
    for name in SPLITS:
        idx = torch.tensor([i for i, s in enumerate(raw.splits) if s == name], dtype=torch.long)
        splits[name] = Split(rows[idx], _trim(targets[idx], lengths[idx]), lengths[idx], dataset_ids[idx],
                             [raw.labels[i] for i in idx.tolist()], None if prompts is None else prompts[idx])
    return LabelledData(vectors.float().contiguous(), datasets, splits["train"], splits["val"], raw.questions)


def read_examples(cfg: DataConfig, base_dir: str | os.PathLike = ".", dim: int | None = None
                  ) -> tuple[torch.Tensor, list[str], Examples]:
    """``cfg.labels_file`` read and checked, untokenised: (vectors (M, d), dataset names, the examples).
    ``dim``: the hidden size the vectors must have (None: any). Needs no model (the nearest-neighbour
    baseline reads its training set with it)."""
    path = _resolve(cfg.labels_file, base_dir)
    if not path.is_file():
        raise SelfieError(f"labels file not found: {path} (set data.labels_file)")
    override = VectorSource.parse(cfg.vectors_file).relative_to(base_dir) if cfg.vectors_file else None
    if _is_jsonl(path):
        vectors, datasets, raw = _read_jsonl(path, override)
    else:
        vectors, datasets, raw = _read_sections(path, override)
    if dim is not None and (vectors.dim() != 2 or vectors.shape[1] != dim):
        raise SelfieError(f"vectors have shape {tuple(vectors.shape)} but the model's hidden size is {dim}; "
                          "use vectors taken from this model (or the right data.vectors_file)")
    used = torch.tensor(sorted(set(raw.rows)), dtype=torch.long)
    if not torch.isfinite(vectors[used]).all():
        bad = (~torch.isfinite(vectors[used])).any(-1).sum().item()
        raise SelfieError(f"{bad} labelled vector(s) contain NaN/Inf; drop those entries from {path.name}")
    asked = bool(raw.questions)
    if cfg.strip_labels:
        raw.labels = [s.strip() if not asked or raw.prompts[i] == 0 else s for i, s in enumerate(raw.labels)]
    for i, label in enumerate(raw.labels):
        if not label or not label.strip():
            what = "answer" if asked and raw.prompts[i] else "label"
            raise SelfieError(f"{path.name}: empty {what} for vector row {raw.rows[i]} "
                              f"(dataset {datasets[raw.datasets[i]]!r}); remove it or give it text")
    if "train" not in raw.splits:
        raise SelfieError(f"{path.name} has no examples with split 'train'")
    return vectors, datasets, raw


def tokenize_targets(tokenizer, labels: list[str], eos_token: str | None,
                     plain: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``label + '"' + eos`` for every label → right-padded (N, L) ids and (N,) lengths (one batched call).
    ``eos_token`` None: the model's end-of-turn token, read off its chat template. ``plain[i]``: example i
    is a question's answer, whose target is ``answer + eos`` (no closing quote)."""
    eos_token = eos_token or end_of_turn_token(tokenizer)
    if eos_token not in tokenizer.get_vocab():
        raise SelfieError(f"data.eos_token {eos_token!r} is not a token of this tokenizer; set it to the "
                          "model's end-of-turn token (Llama-3: '<|eot_id|>')")
    plain = plain or [False] * len(labels)
    texts = [f'{label}{eos_token}' if p else f'{label}"{eos_token}' for label, p in zip(labels, plain)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    out = torch.zeros(len(ids), int(lengths.max()) if len(ids) else 1, dtype=torch.long)
    for i, x in enumerate(ids):  # once per run, not in the training loop
        out[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return out, lengths


def _trim(targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return targets[:, :int(lengths.max())] if len(lengths) else targets[:, :1]


# ---------------------------------------------------------------- reading


def check_sources(cfg: DataConfig, base_dir: str | os.PathLike = ".") -> None:
    """Cheap checks that need no model: the labels file, a vectors file, sae-lens when asked for.
    Run before loading a big model so a typo fails in a second, not after minutes of loading."""
    if not _resolve(cfg.labels_file, base_dir).is_file():
        raise SelfieError(f"labels file not found: {cfg.labels_file} (data.labels_file)")
    if cfg.vectors_file:
        given = VectorSource.parse(cfg.vectors_file)
        given.relative_to(base_dir).check("data.vectors_file", name=given.path)


def _resolve(path: str | os.PathLike, base_dir: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else Path(base_dir) / p


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _read_sections(path: Path, override: VectorSource | None) -> tuple[torch.Tensor, list[str], Examples]:
    try:
        with open_text(path) as f:
            sections = json.load(f)
    except (json.JSONDecodeError, OSError, EOFError) as e:
        raise SelfieError(f"{path.name} is not a readable JSON labels file ({e})") from None
    if isinstance(sections, dict):
        sections = [sections]
    if not isinstance(sections, list) or not sections:
        raise SelfieError(f"{path.name} must hold a list of sections {{'metadata': ..., 'vectors': [...]}}")
    sources: dict[VectorSource, tuple[int, torch.Tensor]] = {}  # source → (row offset, tensor)
    datasets: list[str] = []
    raw = Examples([], [], [], [])
    for s, section in enumerate(sections):
        if not isinstance(section, dict) or not isinstance(section.get("vectors"), list):
            raise SelfieError(f"{path.name}: section {s} needs a 'vectors' list of {{index, labels, split}}")
        meta = section.get("metadata") or {}
        source = override or (VectorSource.parse(path.parent / meta["filename"]) if meta.get("filename") else None)
        if source is None:
            raise SelfieError(f"{path.name}: section {s} ({meta.get('dataset_name', '?')}) names no vectors "
                              "'filename'; pass the vectors with --set data.vectors_file=FILE (or "
                              "sae-lens:<release>/<sae_id> for SAE decoder rows)")
        if source not in sources:
            offset = sum(len(t) for _, t in sources.values())
            sources[source] = (offset, source.load()[0])
        offset, tensor = sources[source]
        name = str(meta.get("dataset_name") or Path(str(source)).stem)
        key = f"{name}@l{meta['layer']}" if meta.get("layer") is not None else name
        if key not in datasets:
            datasets.append(key)
        _add_entries(raw, section["vectors"], offset, len(tensor), datasets.index(key), f"{path.name} [{key}]")
    vectors = torch.cat([t for _, t in sources.values()]) if len(sources) > 1 else next(iter(sources.values()))[1]
    return vectors, datasets, raw


def _add_entries(raw: Examples, entries: list, offset: int, n: int, dataset: int, where: str) -> None:
    for e in entries:
        index, labels, split = e.get("index"), e.get("labels"), e.get("split", "train")
        if not isinstance(index, int) or not 0 <= index < n:
            raise SelfieError(f"{where}: vector index {index!r} out of range; the vectors file has {n} rows")
        if isinstance(labels, str):
            labels = [labels]
        pairs = _question_pairs(e.get("questions"), f"{where}: entry {index}")
        if labels is None and pairs:
            labels = []
        if not isinstance(labels, list) or not (labels or pairs) or not all(isinstance(x, str) for x in labels):
            raise SelfieError(f"{where}: entry {index} needs 'labels', a non-empty list of strings; got {labels!r}")
        if split not in SPLITS:
            raise SelfieError(f"{where}: entry {index} has split {split!r}; valid: {', '.join(SPLITS)}")
        for prompt, text in [(0, label) for label in labels] + [(_question_id(raw, q), a) for q, a in pairs]:
            raw.rows.append(offset + index)
            raw.labels.append(text)
            raw.splits.append(split)
            raw.datasets.append(dataset)
            raw.prompts.append(prompt)


def _question_pairs(given, where: str) -> list[tuple[QuestionPrompt, str]]:
    """An entry's ``questions``: a list of {"question": "... {vector} ...", "answer": "..."} with an optional
    "answer_prefix" (absent: none) → (prompt, answer) pairs."""
    if given is None:
        return []
    fix = 'a list of {"question": "Is {vector} a city?", "answer": "Yes."}'
    if not isinstance(given, list):
        raise SelfieError(f"{where}: 'questions' must be {fix}; got {given!r}")
    pairs = []
    for pair in given:
        if not isinstance(pair, dict) or not {"question", "answer"} <= set(pair) <= {
                "question", "answer", "answer_prefix"} or not all(isinstance(v, str) for v in pair.values()):
            raise SelfieError(f"{where}: each of 'questions' must be {fix}; got {pair!r}")
        if "{vector}" not in pair["question"]:
            raise SelfieError(f"{where}: question {pair['question']!r} has no {{vector}}; put {{vector}} where the "
                              "vector goes")
        pairs.append((QuestionPrompt(pair["question"], pair.get("answer_prefix", "")), pair["answer"]))
    return pairs


def _question_id(raw: Examples, question: QuestionPrompt) -> int:
    if question not in raw.questions:
        raw.questions.append(question)
    return raw.questions.index(question) + 1


def _read_jsonl(path: Path, override: VectorSource | None) -> tuple[torch.Tensor, list[str], Examples]:
    inline: list[list[float]] = []
    datasets: list[str] = []
    raw = Examples([], [], [], [])
    table = override.load()[0] if override else None
    with open_text(path) as f:
        for lineno, rec in iter_jsonl(f, path.name, what="labels"):
            name = str(rec.get("dataset") or path.name.split(".")[0])
            key = f"{name}@l{rec['layer']}" if rec.get("layer") is not None else name
            if key not in datasets:
                datasets.append(key)
            entry = {"labels": rec.get("labels", rec.get("label")), "split": rec.get("split", "train"),
                     "questions": rec.get("questions")}
            if "vector" in rec:
                entry["index"] = len(inline)
                inline.append(rec["vector"])
                _add_entries(raw, [entry], 0, len(inline), datasets.index(key), f"{path.name}:{lineno}")
            elif "index" in rec:
                if table is None:
                    raise SelfieError(f"{path.name}:{lineno} refers to vector index {rec['index']} but no vectors "
                                      "file is set; pass --set data.vectors_file=FILE")
                entry["index"] = rec["index"]
                _add_entries(raw, [entry], 0, len(table), datasets.index(key), f"{path.name}:{lineno}")
            else:
                raise SelfieError(f"{path.name}:{lineno} needs 'vector' (a list of floats) or 'index'")
    if inline and table is not None:
        raise SelfieError(f"{path.name} mixes inline 'vector' rows and 'index' rows; use one form per file")
    if table is not None:
        return table, datasets, raw
    try:
        vectors = torch.tensor(inline, dtype=torch.float32)
    except (ValueError, TypeError) as e:
        raise SelfieError(f"{path.name}: every 'vector' must be a list of numbers of the same length ({e})") from None
    if not inline:
        raise SelfieError(f"{path.name} has no examples")
    return vectors, datasets, raw


def write_labels_json(folder: Path, vectors: torch.Tensor, labels: dict[int, str], train: Sequence[int],
                      heldout: Sequence[int], **metadata) -> Path:
    """``folder/labels.json`` + ``folder/vectors.safetensors`` in the trainer's format, one label per row;
    held-out rows form the validation split. ``metadata``: dataset_name, layer, source, vector_type."""
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors({"vectors": vectors.contiguous()}, folder / "vectors.safetensors")
    split = {i: "train" for i in train} | {i: "val" for i in heldout}
    meta = {"dataset_name": metadata.pop("dataset_name"), "filename": "vectors.safetensors", **metadata}
    section = {"metadata": meta,
               "vectors": [{"index": i, "labels": [labels[i]], "split": split[i]} for i in sorted(split)]}
    path = folder / "labels.json"
    path.write_text(json.dumps([section]))
    return path

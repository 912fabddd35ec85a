"""The label in a generated description: where it ends (``label_end``), how it is cut from the text, and
how many tokens it may take (``max_new_tokens``).

``"last-quote"`` (the reference's ``strip_last_quote``) generates to end-of-turn and takes the text
before the last ``"``, so labels may contain quotes: right for a trained adapter, whose targets end in
``"`` + end-of-turn. ``"first-quote"`` stops a row at the first token containing ``"`` (or end-of-turn)
and cuts there: right for the untrained baseline, since a chat model never trained to stop there closes
the quote and goes on explaining (SmolLM2: ``déjà vu" in French. It is a French phrase that…``), so it
reaches end-of-turn late or never and its last quote lies inside the explanation. ``"auto"`` (default)
picks last-quote with an adapter and first-quote without one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import SelfieError

LABEL_ENDS = ("last-quote", "first-quote")
AUTO = "auto"

# How many tokens a description may run to, by the token that ends the model's chat turn (its family).
# Llama-3: the reference's 40 (the published adapters write SAE-feature labels of up to ~30 tokens).
# ChatML (SmolLM2, Qwen) and others: small chat models used on CPUs, where the batch runs as long as its
# longest row: 24 bounds a rambling row while a phrase label fits (measured in README "Any model").
MAX_NEW_TOKENS_BY_END_OF_TURN = {"<|eot_id|>": 40, "<|im_end|>": 24}
DEFAULT_MAX_NEW_TOKENS = 24


def check_label_end(label_end: str) -> str:
    if label_end not in LABEL_ENDS:
        raise SelfieError(f"label_end must be one of {', '.join(LABEL_ENDS)}, got {label_end!r} "
                          "(--label-end last-quote | first-quote | auto)")
    return label_end


def resolve_label_end(label_end: str, has_adapter: bool) -> str:
    """``"auto"`` → ``"last-quote"`` with an adapter, ``"first-quote"`` for the untrained baseline; a
    concrete choice is checked and kept.

    >>> resolve_label_end("auto", has_adapter=False)
    'first-quote'
    """
    if label_end == AUTO:
        return "last-quote" if has_adapter else "first-quote"
    return check_label_end(label_end)


def family_max_new_tokens(end_of_turn: str | None) -> int:
    """The default ``max_new_tokens`` of a model family, named by its end-of-turn token (``<|eot_id|>`` → 40).

    >>> family_max_new_tokens("<|im_end|>")
    24
    """
    return MAX_NEW_TOKENS_BY_END_OF_TURN.get(end_of_turn or "", DEFAULT_MAX_NEW_TOKENS)


def extract_label(text: str, closing: str = '"', label_end: str = "last-quote") -> str:
    """The label in a generation: text before the last (or first) closing quote, whitespace-trimmed;
    the whole text when there is no quote (as the reference does).

    >>> extract_label('Use of "takes place" in text"')
    'Use of "takes place" in text'
    """
    if closing not in text:
        return text.strip()
    if label_end == "first-quote":
        return text.split(closing, 1)[0].strip()
    return text.rsplit(closing, 1)[0].strip()


@dataclass(frozen=True)
class LabelSpread:
    """How many distinct labels distinct inputs got: the first sign of a collapsed adapter."""

    inputs: int
    distinct: int
    top: tuple[tuple[str, int], ...]  # the most frequent labels and their counts, most frequent first

    @property
    def collapsed(self) -> bool:
        """A few strings dominate: fewer distinct labels than half the inputs, or one label shared by over
        a fifth of them (judged from 4 inputs on; a label that one input alone got never dominates)."""
        if self.inputs < 4:
            return False
        return self.distinct < self.inputs / 2 or self.top[0][1] > max(1.0, self.inputs / 5)

    def summary(self, width: int = 40) -> str:
        """One short line: the counts and the most frequent label, cut to ``width`` characters, e.g.
        ``212 inputs, 31 distinct labels; most frequent: 'Bangalore' ×74 (35%)``."""
        if not self.top:
            return f"{self.inputs} inputs, no labels"
        label, n = self.top[0]
        short = label if len(label) <= width else label[: width - 1].rstrip() + "…"
        top = f"{short!r} ×{n} ({n / self.inputs:.0%})"
        return f"{self.inputs} inputs, {self.distinct} distinct labels; most frequent: {top}"


def label_spread(labels: Iterable[str], top: int = 3) -> LabelSpread:
    """Count the distinct strings among one label per input (whitespace-trimmed).

    >>> label_spread(["Bangalore", "Bangalore", "Osaka"]).distinct
    2
    """
    counts = Counter(label.strip() for label in labels)
    return LabelSpread(sum(counts.values()), len(counts), tuple(counts.most_common(top)))

"""The label in a generated description: where it ends (``label_end``) and how it is cut from the text.

``"last-quote"`` (the reference's ``strip_last_quote``, default) generates to end-of-turn and takes the
text before the last ``"``, so labels may contain quotes; ``"first-quote"`` stops a row at the first
token containing ``"`` (one token sooner) and cuts there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import SelfieError

LABEL_ENDS = ("last-quote", "first-quote")


def check_label_end(label_end: str) -> str:
    if label_end not in LABEL_ENDS:
        raise SelfieError(f"label_end must be one of {', '.join(LABEL_ENDS)}, got {label_end!r} "
                          "(--label-end last-quote | first-quote)")
    return label_end


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

    def summary(self) -> str:
        """One line, e.g. ``212 inputs, 31 distinct labels; most frequent: 'Bangalore' ×74 (35%), …``."""
        top = ", ".join(f"{label!r} ×{n} ({n / self.inputs:.0%})" for label, n in self.top)
        return f"{self.inputs} inputs, {self.distinct} distinct labels; most frequent: {top}"


def label_spread(labels: Iterable[str], top: int = 3) -> LabelSpread:
    """Count the distinct strings among one label per input (whitespace-trimmed).

    >>> label_spread(["Bangalore", "Bangalore", "Osaka"]).distinct
    2
    """
    counts = Counter(label.strip() for label in labels)
    return LabelSpread(sum(counts.values()), len(counts), tuple(counts.most_common(top)))

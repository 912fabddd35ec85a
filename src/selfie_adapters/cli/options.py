"""Options and parsers shared by several commands, so each flag reads and fails the same way everywhere."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

import typer

from ..errors import SelfieError
from ..interpret.label_text import AUTO, LABEL_ENDS
from ..models.loading import DTYPES

ModelOpt = Annotated[str, typer.Option("--model", help="Model: hub id, folder, folder/file.gguf or a catalogue "
                                       "name (selfie models); the adapter's model.")]
DtypeOpt = Annotated[Literal[DTYPES], typer.Option("--dtype", help="Model dtype.")]
AllowMismatchOpt = Annotated[bool, typer.Option("--allow-model-mismatch",
                                               help="Use the adapter on a model it was not trained for.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: the model's).")]
InjectLayerOpt = Annotated[int | None, typer.Option("--inject-layer", help="Overwrite the residual entering "
                                                    "block K instead of the input embeddings.")]
TemplateOpt = Annotated[str | None, typer.Option("--template", help="Prompt template (default: the adapter's, "
                                                 "else the model family's SelfIE prompt).")]
InjectionTokenOpt = Annotated[str | None, typer.Option("--injection-token", help="Token in the template replaced "
                                                       "by the vector (default: the adapter's, else one the "
                                                       "tokenizer keeps whole).")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch (default: "
                                                "OMP_NUM_THREADS if set, else the usable CPUs that other "
                                                "processes leave idle).")]



def choices(name: str, values) -> type[Enum]:
    """A typer choice type whose values are a registry's keys, so the CLI never lists them by hand."""
    return Enum(name, {v: v for v in values}, type=str)


LabelEnd = choices("LabelEnd", (AUTO, *LABEL_ENDS))
LABEL_END_HELP = ("last-quote: generate to end-of-turn, label = text before the last quote (reference); "
                  "first-quote: stop at the first quote; auto: last-quote with an adapter, first-quote without.")

def parse_indices(spec: str, flag: str) -> list[int]:
    """'0,5,10-12' → [0, 5, 10, 11, 12]; a malformed ``spec`` is an error naming ``flag``."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise SelfieError(f"{flag} must look like '0,5,10-20', got {spec!r}") from None
    if not out:
        raise SelfieError(f"{flag} names no index, got {spec!r}; e.g. {flag} 0-99")
    return out

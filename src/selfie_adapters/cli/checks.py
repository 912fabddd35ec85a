"""Option values checked before any model loads: one ``error:`` line instead of a late traceback.

typer's ``min``/``max`` let NaN through (every comparison with NaN is false) and know nothing of
devices, so commands call these on their numeric options first.
"""

from __future__ import annotations

import math

from ..errors import SelfieError
from ..interpret.template import INJECTION_TOKEN, PromptTemplate


def check_number(flag: str, value: float | None, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> None:
    """A finite number within [low, high] (``low_open``: strictly above ``low``); None passes."""
    if value is None:
        return
    if not math.isfinite(value):
        raise SelfieError(f"{flag} must be a finite number, got {value}")
    too_low = low is not None and (value < low or (low_open and value == low))
    if too_low or (high is not None and value > high):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        raise SelfieError(f"{flag} must be {' and '.join(x for x in (lo, hi) if x)}, got {value:g}")


def check_scales(scales: list[float] | None) -> tuple[float, ...] | None:
    """Soft-token scales: finite and positive; repeats collapsed (first occurrence kept)."""
    if not scales:
        return None
    for s in scales:
        check_number("--scale", s, low=0.0, low_open=True)
    return tuple(dict.fromkeys(float(s) for s in scales))


def check_sampling(temperature: float, top_p: float) -> None:
    check_number("--temperature", temperature, low=0.0)
    check_number("--top-p", top_p, low=0.0, high=1.0, low_open=True)


def check_device(device: str | None) -> None:
    """A device torch knows and this machine has (e.g. --device cuda on a CPU-only machine is refused)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise SelfieError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1, mps, ...") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SelfieError(f"--device {device}: no CUDA GPU is available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise SelfieError(f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SelfieError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SelfieError(f"--device {device}: unsupported device type {dev.type!r}; use cpu, cuda or mps")


def check_model_name(model: str) -> None:
    """A ``--model`` that names no model (a mistyped catalogue name, a missing folder or .gguf) fails
    here, before the command imports torch (``models/catalogue.py`` is light)."""
    from ..models.catalogue import resolve_model

    resolve_model(model)


def check_template(template: str | None, injection_token: str | None) -> None:
    """A ``--template`` must hold its injection token (default: the Llama-3 one); checked before loading."""
    if template is not None:
        PromptTemplate(template, injection_token or INJECTION_TOKEN)

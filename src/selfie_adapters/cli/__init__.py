"""`selfie` command line: thin commands over the public API. ``main(argv)`` runs in-process."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from ..errors import SelfieError
from . import (
    ask,  # noqa: F401  (registers commands)
    baseline,  # noqa: F401
    compat,  # noqa: F401
    core,  # noqa: F401
    demo,  # noqa: F401
    evals,  # noqa: F401
    experiments,  # noqa: F401
    models,  # noqa: F401
    reconstruct,  # noqa: F401
    serve,  # noqa: F401
    train,  # noqa: F401
)
from .app import app, eval_app
from .display import load_notices

__all__ = ["app", "eval_app", "main"]


MULTI_VALUE_FLAGS = ("--scale", "--layers")  # `--scale 1 2 3` means `--scale 1 --scale 2 --scale 3`
MULTI_WORD_FLAGS = ("--choices",)  # `--choices yes no` means `--choices yes --choices no` (up to the next flag)


def expand_multi_values(argv: list[str]) -> list[str]:
    """Let a repeatable option take several values after one flag, as in ``--scale 1 2 3``."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        j = i + 1
        while j < len(argv) and ((argv[i] in MULTI_VALUE_FLAGS and _is_number(argv[j]))
                                 or (argv[i] in MULTI_WORD_FLAGS and not argv[j].startswith("--"))):
            j += 1
        if j > i + 1:  # flag + numbers → one flag per number
            out += [x for value in argv[i + 1:j] for x in (argv[i], value)]
        else:
            out.append(argv[i])
        i = j
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


@contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """Only the CLI's own progress bars while a command runs; the caller's setting is restored after.

    transformers takes its switch from huggingface_hub's when it is first imported, so setting the
    hub's switch here covers a transformers that only the command imports (and keeps `--help` light).
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hf_logging = sys.modules.get("transformers.utils.logging")
    hub_was_on = not are_progress_bars_disabled()
    was_on = hf_logging.is_progress_bar_enabled() if hf_logging is not None else hub_was_on
    disable_progress_bars()
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging = sys.modules.get("transformers.utils.logging")
        if was_on and hf_logging is not None:
            hf_logging.enable_progress_bar()
        if hub_was_on:
            enable_progress_bars()


def os_error_message(e: OSError) -> str:
    """One line for a filesystem error: what happened, to which file (nothing half-written stays behind)."""
    what = (e.strerror or type(e).__name__).lower()
    where = ", ".join(str(f) for f in (e.filename, e.filename2) if f)
    return f"{what}: {where}" if where else f"{what} ({e})"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input → one line on stderr and exit code 2, never a traceback."""
    command = typer.main.get_command(app)
    argv = expand_multi_values(list(sys.argv[1:] if argv is None else argv))
    try:
        with hf_progress_bars_off(), load_notices():
            result = command.main(args=argv, prog_name="selfie", standalone_mode=False)
    except SelfieError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"error: file not found: {e.filename or e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, full disk, read-only file system, name too long, ...
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"error: an input is not valid UTF-8 text (byte {e.start}); re-save it as UTF-8", file=sys.stderr)
        return 2
    except typer.TyperException as e:  # typer >= 0.29 vendors click: usage errors derive from this
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: its help (the message) is the answer
            print(e.format_message())
        elif e.format_message():
            print(f"error: {e.format_message()}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

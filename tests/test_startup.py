"""Start-up: the CLI and the package import without torch or transformers, so `selfie --help` and
usage errors are quick; the commands that run a model import them. Pinned by what is imported, never
by timing (benchmarks/bench_startup.py measures the seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import selfie_adapters

HEAVY = ("torch", "transformers", "numpy", "safetensors", "selfie_adapters.toy", "selfie_adapters.adapters.kinds")


def imported_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter; which HEAVY modules it left in ``sys.modules``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_cli_imports_no_heavy_module():
    assert imported_after("import selfie_adapters.cli") == dict.fromkeys(HEAVY, False)


HELP_OF_EVERY_COMMAND = """
import contextlib, io
import typer
from selfie_adapters.cli import app, main

def paths(cmd, prefix=()):
    yield prefix
    for name, sub in getattr(cmd, "commands", {}).items():  # a group (typer vendors click: no isinstance)

        yield from paths(sub, prefix + (name,))

seen, codes = [], {}
for path in paths(typer.main.get_command(app)):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        codes[" ".join(path)] = main([*path, "--help"])
    assert "Usage" in out.getvalue(), path
    seen.append(path)
assert all(code == 0 for code in codes.values()), codes
assert len(seen) > 15, seen  # every command and group, not just the top level
typo = ["--model", "smollm2-135m", "--layer", "1", "--prompts", "p.txt", "--out", "o.safetensors"]
for argv in (["nosuchcommand"], ["describe", "--bogus"], ["train"], ["eval", "loss", "--labels", "x"],
             ["extract", *typo], ["describe", "--vectors", "v.pt", *typo[:2], "--out", "o.jsonl"]):
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 2, argv
"""


def test_help_of_every_command_usage_errors_and_a_mistyped_model_import_no_heavy_module():
    assert imported_after(HELP_OF_EVERY_COMMAND) == dict.fromkeys(HEAVY, False)


def test_importing_the_package_is_light_and_the_api_loads_on_use():
    assert imported_after("import selfie_adapters") == dict.fromkeys(HEAVY, False)
    loaded = imported_after("from selfie_adapters import Adapter")
    assert loaded["torch"] and loaded["selfie_adapters.adapters.kinds"]


def test_every_public_name_resolves():
    for name in selfie_adapters.__all__:
        assert getattr(selfie_adapters, name) is not None, name
    assert set(selfie_adapters.__all__) <= set(dir(selfie_adapters))


def test_a_typo_in_a_public_name_is_an_attribute_error_naming_the_right_one():
    with pytest.raises(AttributeError, match=r"has no attribute 'load_adaptor'; did you mean load_adapter"):
        selfie_adapters.load_adaptor  # noqa: B018
    with pytest.raises(AttributeError, match=r"has no attribute 'zzz'; see selfie_adapters.__all__"):
        selfie_adapters.zzz  # noqa: B018
    with pytest.raises(ImportError):
        from selfie_adapters import Interpretr  # noqa: F401


def test_the_light_kind_names_are_the_registry():
    from selfie_adapters.adapters.kind_names import KIND_NAMES, trainable_kind_names
    from selfie_adapters.adapters.kinds import PROJECTIONS, trainable_kinds

    assert list(KIND_NAMES) == list(PROJECTIONS)
    assert trainable_kind_names() == trainable_kinds()

"""Fixed cost of each `selfie` command: wall seconds from process start to exit, median of 3.

Every command here exits before any model loads (help, a usage error, the catalogue, inspecting a
tiny adapter, a mistyped model name), so the time is the CLI's start-up: Python, imports and argument parsing. It is the
price of every command, paid again by each shell call. Target: `selfie --help` and usage errors
<= 1.5 s; torch and transformers imported only by commands that need them.

The baseline column is `python -c pass` in the same interpreter (start-up of Python itself), measured
in the same run. Run: python benchmarks/bench_startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SCRIPT = Path(sys.executable).parent / "selfie"  # the installed entry point, as a user runs it
SELFIE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "selfie_adapters.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def tiny_adapter(folder: Path) -> Path:
    """A scalar_affine adapter of dimension 8 (written in a subprocess so this one stays light)."""
    path = folder / "tiny.safetensors"
    code = ("from selfie_adapters.adapters.artifact import Adapter;"
            "from selfie_adapters.adapters.kinds import build_projection;"
            f"Adapter(build_projection('scalar_affine', 8), {{'model_name': 'toy'}}).save({str(path)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
    return path


def wall(argv: list[str], repeats: int) -> tuple[float, int]:
    """Median wall seconds over ``repeats`` runs, and the exit code."""
    times, rc = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        rc = subprocess.run(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        times.append(time.perf_counter() - t)
    return statistics.median(times), rc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = tiny_adapter(Path(tmp))
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("Tell me about Paris.\n")
        cases = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "import selfie_adapters.cli": [sys.executable, "-c", "import selfie_adapters.cli"],
            "selfie --help": SELFIE + ["--help"],
            "selfie describe --help": SELFIE + ["describe", "--help"],
            "selfie train --help": SELFIE + ["train", "--help"],
            "selfie eval generation --help": SELFIE + ["eval", "generation", "--help"],
            "selfie serve --help": SELFIE + ["serve", "--help"],
            "selfie demo --help": SELFIE + ["demo", "--help"],
            "selfie models": SELFIE + ["models"],
            "selfie inspect tiny.safetensors": SELFIE + ["inspect", str(adapter)],
            "selfie nosuchcommand (usage error)": SELFIE + ["nosuchcommand"],
            "selfie describe --bogus (usage error)": SELFIE + ["describe", "--bogus"],
            "selfie extract --model smollm2-135m (typo)": SELFIE + ["extract", "--model", "smollm2-135m", "--layer",
                                                                  "1", "--prompts", str(prompts), "--out",
                                                                  str(Path(tmp) / "o.safetensors")],
        }
        print(f"{'command':42s} {'wall s (median of ' + str(args.repeats) + ')':>22s}  exit")
        for name, argv in cases.items():
            seconds, rc = wall(argv, args.repeats)
            print(f"{name:42s} {seconds:22.2f}  {rc}")


if __name__ == "__main__":
    main()

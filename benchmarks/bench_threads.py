"""torch's own thread count vs ours (``selfie_adapters.threads``), on `selfie demo`, idle and beside a CPU hog.

Each case runs `selfie demo` in a fresh process with OMP_NUM_THREADS unset: "torch" passes
``--threads`` = torch's own default (one per physical core), "ours" passes nothing (the usable CPUs
that the 1-minute load leaves idle). "beside hog" starts ``--hog`` busy-looping processes first
(killed after). Prints wall and CPU seconds and the load average each case started at.
Target: ours beside the hog >= 2x faster than torch's, and ours idle no slower than torch's (<= 1.1x).

Run: python benchmarks/bench_threads.py                 # one adapter kind, 100 steps (a few minutes)
     python benchmarks/bench_threads.py --full          # the whole demo, as `make demo` (long beside the hog)
     python benchmarks/bench_threads.py --cases ours-hog,torch-hog
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from selfie_adapters.threads import default_threads

CASES = ("torch-idle", "ours-idle", "ours-hog", "torch-hog")


def torch_default_threads(env: dict) -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=env,
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def run_demo(args: list[str], env: dict, timeout_s: float | None) -> tuple[float, float, bool]:
    """(wall s, CPU s of the child, finished?) of one `selfie demo`; stopped after ``timeout_s``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t, finished = time.perf_counter(), True
    with tempfile.TemporaryDirectory() as out:
        try:
            subprocess.run([sys.executable, "-m", "selfie_adapters.cli", "demo", "--out", out, *args], env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            finished = False
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the whole demo (every kind, 200 steps)")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the one kind (without --full)")
    parser.add_argument("--hog", type=int, default=2, help="busy-looping processes beside the 'hog' cases")
    parser.add_argument("--timeout", type=float, default=None, help="stop a case after this many seconds")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    opts = parser.parse_args()
    demo_args = [] if opts.full else ["--kind", "scalar_affine_plus_low_rank", "--steps", str(opts.steps)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    old = torch_default_threads(env)
    print(f"demo {' '.join(demo_args) or '(full)'}; torch's default: {old} threads; hog: {opts.hog} processes")
    print(f"{'case':<12} {'threads':>8} {'load at start':>14} {'wall s':>8} {'CPU s':>8}")
    results = {}
    for case in opts.cases.split(","):
        who, where = case.split("-")
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(opts.hog)] \
            if where == "hog" else []
        try:
            if hogs:
                time.sleep(20)  # let the load average see them, as it would a job already running
            load, ours = os.getloadavg()[0], default_threads()
            wall, cpu, finished = run_demo([*demo_args, *(["--threads", str(old)] if who == "torch" else [])], env,
                                           opts.timeout)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        results[case] = wall
        label = str(old) if who == "torch" else f"ours: {ours}"
        shown = f"{wall:.1f}" if finished else f">{wall:.0f}"  # stopped by --timeout: a lower bound
        print(f"{case:<12} {label:>8} {load:>14.1f} {shown:>8} {cpu:>8.1f}", flush=True)
    for where in ("idle", "hog"):
        if f"torch-{where}" in results and f"ours-{where}" in results:
            print(f"{where}: ours is {results[f'torch-{where}'] / results[f'ours-{where}']:.2f}x torch's default"
                  " (at least, where a case was stopped)")


if __name__ == "__main__":
    main()

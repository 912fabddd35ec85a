"""`selfie serve` as a child process (for end-to-end tests, the benchmark and the docs screenshot).

>>> with serve_process(["--model", "toy"]) as url:
...     httpx.get(url + "/info").json()["layers"]
4
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import SelfieError

# Flags for Debian's chromium under Playwright in a container (no sandbox, no GPU, no network chatter).
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")


def chromium_path() -> str | None:
    """A Chromium binary: $SELFIE_CHROMIUM, ``chromium`` on PATH, or /usr/bin/chromium."""
    for candidate in (os.environ.get("SELFIE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_process(args: Sequence[str], *, port: int | None = None, timeout_s: float = 120.0,
                  env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``selfie serve ARGS --port P`` on 127.0.0.1, wait until /info answers, yield the base URL."""
    import httpx

    port = port or free_port()
    src = str(Path(__file__).resolve().parents[2])  # this checkout's code wins over an installed copy
    env = {**os.environ, **(env or {}), "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, "-m", "selfie_adapters.cli", "serve", *args, "--port", str(port),
                                 "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, url, timeout_s, log, httpx)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float, log, httpx) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/info", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise SelfieError(f"selfie serve did not start: {log.read()[-2000:]}")
        time.sleep(0.3)

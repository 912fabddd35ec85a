"""End to end: `selfie serve` on 127.0.0.1 with the toy model, driven over HTTP and in headless Chromium."""

import json
import time
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")

from selfie_adapters import Adapter, build_projection  # noqa: E402
from selfie_adapters.serve.process import CHROMIUM_ARGS, chromium_path, serve_process  # noqa: E402
from selfie_adapters.toy import TOY_DIR  # noqa: E402

PROMPT = "Tell me about Zapees."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`selfie serve --model toy --adapter A` as a real process; yields its base URL."""
    folder = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    adapter = folder / "toy-adapter.safetensors"
    Adapter(build_projection("scalar_affine", 128, init_scale=3.0), {"model_name": str(TOY_DIR)}).save(adapter)
    with serve_process(["--model", "toy", "--adapter", str(adapter)]) as url:
        yield url


def test_server_survives_bad_input_and_cancels_abandoned_streams(server):
    with httpx.Client(base_url=server, timeout=60) as client:
        as_json = {"content-type": "application/json"}
        assert client.post("/describe", content="{oops", headers=as_json).status_code == 400
        nan = '{"vectors": [' + ", ".join(["NaN"] * 128) + "]}"
        assert client.post("/describe", content=nan, headers=as_json).status_code == 422
        body = {"vectors": torch.randn(400, 128).tolist(), "mode": "baseline", "scales": [1.0, 2.0, 3.0],
                "max_new_tokens": 32, "stream": True}
        with client.stream("POST", "/describe", json=body) as r:
            first = json.loads(next(r.iter_lines()))  # the first batch arrived ...
            assert first["index"] == 0
        # ... and the client left: the rest of its 1,200 generations must be dropped, not computed
        deadline = time.monotonic() + 60
        while (stats := client.get("/info").json()["stats"])["pending_rows"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stats["cancelled_rows"] > 0 and stats["rows"] < 400
        assert client.post("/describe", json={"vectors": [0.5] * 128}).status_code == 200


@pytest.mark.slow
def test_explorer_page_in_headless_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium binary: install Debian's chromium (apt-get install chromium) or set SELFIE_CHROMIUM")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS), headless=True)
        except sync_api.Error as e:  # e.g. Ubuntu's snap wrapper in a container
            pytest.skip(f"chromium at {executable} does not start: {str(e).splitlines()[0]}")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, accept_downloads=True)
            drive_page(page, server, tmp_path)
        finally:
            browser.close()


def drive_page(page, url: str, tmp_path: Path) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('4 layers')")
    assert page.is_checked("#mode-adapter")
    page.fill("#prompt", PROMPT)
    page.fill("#layer-from", "0")
    page.fill("#layer-to", "3")
    page.click("#run")
    # the grid: 4 layer rows × the prompt's tokens (from "Tell" to the chat template's last token)
    page.wait_for_function("document.querySelectorAll('#grid td').length > 0 && "
                           "document.querySelectorAll('#grid td.pending').length === 0", timeout=60_000)
    headers = page.locator("#grid th:not(.layer)").all_inner_texts()
    assert headers[:5] == ["Tell", " me", " about", "␣", "Zapees"]
    assert page.locator("#grid tr").count() == 1 + 4 and page.locator("#grid td").count() == 4 * len(headers)
    assert all(t.strip() for t in page.locator("#grid td").all_inner_texts())
    page.locator("#grid td").nth(len(headers) + 4).click()  # layer 1, token "Zapees"
    page.wait_for_selector("#samples li.sample >> nth=5", timeout=60_000)
    assert "layer 1" in page.inner_text("#detail-title") and "Zapees" in page.inner_text("#detail-title")
    assert page.locator("#samples li.sample .tok").count() > 0
    ask_the_cell(page)
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
    assert (tmp_path / "explorer.png").stat().st_size > 10_000
    check_exports(page, tmp_path, len(headers))
    page.check("#mode-baseline")
    page.click("#run")
    page.wait_for_function("document.getElementById('status').textContent.includes('cells in')", timeout=60_000)
    assert errors == []


def check_exports(page, tmp_path: Path, n_tokens: int) -> None:
    with page.expect_download() as info:
        page.click("#export-json")
    grid = json.loads(Path(info.value.path()).read_text())
    assert grid["layers"] == [0, 1, 2, 3] and len(grid["grid"][3]) == n_tokens and grid["mode"] == "adapter"
    with page.expect_download() as info:
        page.click("#export-png")
    png = Path(info.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2_000
    before = page.locator("#grid td").first.evaluate("td => td.style.background")
    page.fill("#search", "Belgar")  # colour by match to a word
    after = page.locator("#grid td").first.evaluate("td => td.style.background")
    assert page.input_value("#colour") == "match" and before != after


def ask_the_cell(page) -> None:
    """The question box asks the clicked cell's state: scored choices, a free answer, a bad question."""
    page.fill("#question", "What colour is {vector}?")
    page.fill("#choices", "red, blue, green")
    page.click("#ask")
    page.wait_for_selector("#answer .choice >> nth=2", timeout=60_000)
    assert page.locator("#answer .choice.best").count() == 1
    shares = [float(t.rsplit(":", 1)[1].strip(" %")) for t in page.locator("#answer .choice").all_inner_texts()]
    assert abs(sum(shares) - 100) < 0.5
    page.fill("#choices", "")
    page.click("#ask")
    page.wait_for_selector("#answer .answer", timeout=60_000)
    page.fill("#question", "What colour is it?")
    page.click("#ask")
    page.wait_for_selector("#answer .error", timeout=60_000)
    assert "{vector}" in page.inner_text("#answer .error")

"""Regenerate docs/serve.png: the explorer page on the toy model with a toy adapter trained on the spot.

    python scripts/serve_screenshot.py [--out docs/serve.png] [--work DIR]

Trains a scalar-affine + low-rank toy adapter on layer-1 concept vectors (about half a minute on 2
cores), writes their mean as mean-vectors (the adapter was trained on contrastive vectors), starts
`selfie serve` with both, and drives the page in headless Chromium: a held-out concept's prompt,
layers 0-3, cells coloured by whether they name the concept, one cell's samples.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright
from selfie_adapters.toy.experiment import ExperimentConfig, concept_vectors, run_experiment

from selfie_adapters.serve.process import CHROMIUM_ARGS, chromium_path, serve_process
from selfie_adapters.toy import load_toy_model
from selfie_adapters.vectors import extract_hidden_states, save_mean_vectors

KIND, LAYER = "scalar_affine_plus_low_rank", 1


def train_adapter(folder: Path) -> tuple[Path, Path, str]:
    """(adapter, mean vectors, a held-out concept never seen in training); reused if ``folder`` has them."""
    if (folder / "report.json").is_file() and (folder / "mean-vectors.safetensors").is_file():
        report = json.loads((folder / "report.json").read_text())
        return Path(report["kinds"][KIND]["adapter"]), folder / "mean-vectors.safetensors", report["heldout"][0]
    report = run_experiment(ExperimentConfig(kinds=(KIND,), layer=LAYER), folder)
    model, tok, world = load_toy_model()
    prompts = [f"Tell me about {c.name}." for c in world.concepts]
    states = extract_hidden_states(model, tok, prompts, LAYER, chat=True, batch_size=128)[LAYER]
    assert (states - states.mean(0)).allclose(concept_vectors(model, tok, world.concepts, LAYER))
    means = save_mean_vectors({LAYER: states.mean(0)}, folder / "mean-vectors.safetensors", model_name="toy")
    return Path(report["kinds"][KIND]["adapter"]), means, report["heldout"][0]


def screenshot(url: str, concept: str, out: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=list(CHROMIUM_ARGS), headless=True)
        page = browser.new_page(viewport={"width": 1720, "height": 660}, device_scale_factor=1)
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model-info').textContent.includes('layers')")
        page.fill("#prompt", f"Tell me about {concept}.")
        page.click("#run")
        page.wait_for_function("document.getElementById('status').textContent.includes('cells in')", timeout=120_000)
        n_tokens = page.locator("#grid th:not(.layer)").count()
        page.locator("#grid td").nth(LAYER * n_tokens + n_tokens - 1).click()  # layer 1, last token
        page.wait_for_selector("#samples li.sample >> nth=5", timeout=120_000)
        page.fill("#search", concept)  # colour: where the grid names the concept
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "serve.png")
    parser.add_argument("--work", type=Path, help="keep the trained adapter here and reuse it next time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        adapter, means, concept = train_adapter(args.work or Path(tmp))
        with serve_process(["--model", "toy", "--adapter", str(adapter), "--mean-vectors", str(means)]) as url:
            screenshot(url, concept, args.out)
    print(f"wrote {args.out} (held-out concept {concept})")


if __name__ == "__main__":
    main()

"""`selfie serve --reconstructor`: described rows carry round-trip scores (whole and streamed), the best row per
vector is marked, /info shows the reconstructor; a reconstructor for another dimension is refused at start."""

import json

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from selfie_adapters.reconstruct import Reconstructor, Scorer  # noqa: E402
from selfie_adapters.serve import Service, create_app  # noqa: E402
from selfie_adapters.toy import TOY_DIR, load_toy_model  # noqa: E402
from selfie_adapters.vectors.hidden import extract_hidden_states  # noqa: E402

NAMES = ["Zapees", "Brou", "Trail"]


@pytest.fixture(scope="module")
def toy_rt():
    model, tok, _ = load_toy_model()
    states = extract_hidden_states(model, tok, [f"Tell me about {n}." for n in NAMES], 1)[1]
    mean = states.mean(0)
    rec = Reconstructor.roundtrip(mean, 1, states - mean, model_name=str(TOY_DIR))
    return model, tok, rec, states - mean


def test_describe_rows_carry_scores_and_the_best_is_marked(toy_rt, tmp_path):
    model, tok, rec, vectors = toy_rt
    service = Service(model, tok, None, reconstructor=rec)
    body = {"vectors": vectors.tolist(), "mode": "baseline", "scales": [20.0], "samples": 3, "temperature": 1.0,
            "max_new_tokens": 6}
    with TestClient(create_app(service)) as c:
        info = c.get("/info").json()
        assert info["reconstructor"]["layer"] == 1 and info["reconstructor"]["artifact"] == "reconstructor"
        rows = c.post("/describe", json=body).json()["rows"]
        streamed = [json.loads(x) for x in c.post("/describe", json={**body, "stream": True}).text.splitlines()]
    expect = Scorer(model, tok, rec).score([r["label"] for r in rows], vectors[[r["index"] for r in rows]])
    assert [r["score"] for r in rows] == expect
    assert [r["score"] for r in streamed] == expect  # streamed rows are scored batch by batch
    for i in range(len(NAMES)):
        assert sum(r["best"] for r in rows if r["index"] == i) == 1


def test_cli_serve_refuses_a_reconstructor_for_another_dimension(tmp_path, monkeypatch, capsys):
    import uvicorn

    from selfie_adapters.adapters.kinds import build_projection
    from selfie_adapters.cli import main
    from selfie_adapters.reconstruct import ReaderPrompt

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    path = Reconstructor(build_projection("full_rank", 8), ReaderPrompt(layer=1), torch.zeros(8), 1.0).save(
        tmp_path / "r.safetensors")
    assert main(["serve", "--model", "toy", "--reconstructor", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: reconstructor expects d=8 but the model's hidden size is 128")
    assert err.count("\n") == 1

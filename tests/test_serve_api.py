"""`selfie serve` API in-process on the toy model: every endpoint against the library, and bad input."""

import base64
import json
import re

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from selfie_adapters import Adapter, Interpreter, build_projection, extract_hidden_states  # noqa: E402
from selfie_adapters.serve import Limits, Service, create_app  # noqa: E402
from selfie_adapters.serve import service as service_module  # noqa: E402
from selfie_adapters.toy import TOY_DIR, load_toy_model  # noqa: E402

PROMPT = "Tell me about Zapees."


@pytest.fixture(scope="module")
def toy():
    model, tok, _ = load_toy_model()
    torch.manual_seed(0)
    adapter = Adapter(build_projection("scalar_affine", 128, init_scale=3.0), {"model_name": str(TOY_DIR)})
    return model, tok, adapter


@pytest.fixture(scope="module")
def means():
    torch.manual_seed(1)
    return {1: torch.randn(128)}


@pytest.fixture(scope="module")
def client(toy, means):
    model, tok, adapter = toy
    service = Service(model, tok, adapter, means=means, limits=Limits(max_vectors=64, max_body_bytes=2**20))
    with TestClient(create_app(service)) as c:
        yield c


def post_ok(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def labels(rows):
    return [(r["index"], r["scale"], r["sample"], r["label"]) for r in rows]


def test_info_reports_model_adapter_template_and_limits(client, toy):
    info = client.get("/info").json()
    assert info["hidden_size"] == 128 and info["layers"] == 4 and info["modes"] == ["baseline", "adapter"]
    assert info["adapter"]["projection_type"] == "scalar_affine" and info["adapter"]["model_dim"] == 128
    assert info["injection_sites"] == Interpreter(toy[0], toy[1]).sites and info["mean_layers"] == [1]
    assert info["limits"]["max_vectors"] == 64 and info["default_scales"]["adapter"] == [1.0]
    assert info["batch_generations"] == 128  # the toy vocabulary is small: --batch-size binds, not the logits


def test_describe_float_lists_match_the_library(client, toy):
    model, tok, adapter = toy
    torch.manual_seed(2)
    vecs = torch.randn(3, 128)
    got = post_ok(client, "/describe", {"vectors": vecs.tolist(), "max_new_tokens": 8, "relevancy": True})
    want = Interpreter(model, tok, adapter).describe(vecs, max_new_tokens=8, relevancy=True)
    assert got["mode"] == "adapter" and got["scales"] == [1.0]
    assert labels(got["rows"]) == [(d.index, d.scale, d.sample, d.label) for d in want]
    assert got["rows"][0]["relevancy"][0][0] == want[0].relevancy[0][0]
    base = post_ok(client, "/describe", {"vectors": vecs[0].tolist(), "mode": "baseline", "scales": [2.0],
                                         "max_new_tokens": 8})
    assert [r["label"] for r in base["rows"]] == [d.label for d in Interpreter(model, tok).describe(
        vecs[:1], scales=[2.0], max_new_tokens=8)]


def test_describe_base64_equals_float_lists(client):
    torch.manual_seed(3)
    vecs = torch.randn(2, 128)
    b64 = base64.b64encode(vecs.numpy().astype("<f4").tobytes()).decode()
    body = {"samples": 2, "temperature": 0.9, "seed": 5, "max_new_tokens": 6}
    a = post_ok(client, "/describe", {"vectors": vecs.tolist(), **body})
    b = post_ok(client, "/describe", {"vectors_b64": b64, **body})
    assert a["rows"] == b["rows"] and len(a["rows"]) == 4


def test_describe_prompt_state_subtracts_the_layer_mean(client, toy, means):
    model, tok, adapter = toy
    got = post_ok(client, "/describe", {"prompt": PROMPT, "layer": 1, "position": -1, "chat": True,
                                        "max_new_tokens": 10})
    state = extract_hidden_states(model, tok, [PROMPT], 1, chat=True)[1]
    want = Interpreter(model, tok, adapter).describe(state - means[1], max_new_tokens=10)
    assert [r["label"] for r in got["rows"]] == [d.label for d in want]
    # a raw vector with "layer" gets the same mean subtracted
    raw = post_ok(client, "/describe", {"vectors": state.tolist(), "layer": 1, "max_new_tokens": 10})
    assert raw["rows"] == got["rows"]


def test_describe_streams_ndjson_rows(client):
    torch.manual_seed(4)
    body = {"vectors": torch.randn(5, 128).tolist(), "mode": "baseline", "scales": [1.0, 3.0], "max_new_tokens": 5}
    whole = post_ok(client, "/describe", body)["rows"]
    r = client.post("/describe", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in r.text.splitlines()] == whole


def test_lens_grid_from_one_forward_pass(client, toy, means, monkeypatch):
    model, tok, adapter = toy
    calls = []
    real = service_module.hidden_states_batch
    monkeypatch.setattr(service_module, "hidden_states_batch",
                        lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    lens = post_ok(client, "/lens", {"prompt": PROMPT, "layers": [0, 1, 3], "max_new_tokens": 8})
    assert calls == [[0, 1, 3]]  # all layers from a single forward pass
    assert lens["layers"] == [0, 1, 3] and lens["tokens"][0] == "Tell" and lens["tokens"][-1] == "\n\n"
    assert len(lens["grid"]) == 3 and all(len(row) == len(lens["tokens"]) for row in lens["grid"])
    states = extract_hidden_states(model, tok, [PROMPT], [0, 1, 3], positions=lens["positions"], chat=True)
    interp = Interpreter(model, tok, adapter)
    for r, layer in enumerate(lens["layers"]):
        vecs = states[layer][0] - means.get(layer, 0)
        want = [d.label for d in interp.describe(vecs, scales=lens["scales"], max_new_tokens=8)]
        assert [cell["label"] for cell in lens["grid"][r]] == want
        assert all(cell["logprob"] <= 0 for cell in lens["grid"][r])


def test_lens_stream_sends_header_then_cells(client):
    r = client.post("/lens", json={"prompt": PROMPT, "layers": [2], "mode": "baseline", "chat": False,
                                   "max_new_tokens": 4, "stream": True})
    lines = [json.loads(x) for x in r.text.splitlines()]
    header, cells = lines[0], lines[1:]
    assert header["tokens"] == ["Tell", " me", " about", " ", "Zapees", "."] and header["mode"] == "baseline"
    assert sorted((c["row"], c["col"]) for c in cells) == [(0, j) for j in range(6)]


def test_compare_describes_the_difference(client, toy):
    model, tok, adapter = toy
    other = "Tell me about Riguth."
    got = post_ok(client, "/compare", {"a": {"prompt": PROMPT, "layer": 2, "chat": True},
                                       "b": {"prompt": other, "layer": 2, "chat": True}, "max_new_tokens": 8})
    s = extract_hidden_states(model, tok, [PROMPT, other], 2, chat=True)[2]
    want = Interpreter(model, tok, adapter).describe(s[:1] - s[1:], max_new_tokens=8)
    assert [r["label"] for r in got["rows"]] == [d.label for d in want]
    assert got["norm"] == pytest.approx(float((s[0] - s[1]).norm()), rel=1e-5)


def test_extract_lists_and_base64(client, toy):
    model, tok, _ = toy
    body = {"prompts": [PROMPT, "hello"], "layers": [0, 2], "positions": [-1, 0]}
    got = post_ok(client, "/extract", body)["layers"]
    # unset chat: the chat template, as `selfie extract` (the toy model has one); chat false: raw text
    want = extract_hidden_states(model, tok, [PROMPT, "hello"], [0, 2], positions=[-1, 0], chat=True)
    assert got["layer_2"]["shape"] == [2, 2, 128]
    torch.testing.assert_close(torch.tensor(got["layer_2"]["values"]), want[2])
    raw = post_ok(client, "/extract", {**body, "chat": False})["layers"]["layer_2"]
    want_raw = extract_hidden_states(model, tok, [PROMPT, "hello"], 2, positions=[-1, 0], chat=False)[2]
    torch.testing.assert_close(torch.tensor(raw["values"]), want_raw)
    b64 = post_ok(client, "/extract", {**body, "encoding": "base64"})["layers"]["layer_0"]
    decoded = torch.frombuffer(bytearray(base64.b64decode(b64["b64"])), dtype=torch.float32).view(*b64["shape"])
    torch.testing.assert_close(decoded, want[0])


BAD = [
    ("{not json", 400, "malformed JSON"),
    ({"vectors": [[0.5] * 127]}, 400, r"shape \(N, 128\).*got \(1, 127\)"),
    ('{"vectors": [[NaN' + ", 0.1" * 127 + "]]}", 422, "finite number"),
    ({"vectors_b64": base64.b64encode(b"\0" * 12).decode()}, 400, "multiple of 4 × 128"),
    ({"vectors_b64": "%%%"}, 400, "not valid base64"),
    ({"vectors": [[0.1] * 128], "vectors_b64": "AAAA"}, 400, "exactly one of"),
    ({"vectors": [[0.1] * 128], "scale": 2}, 422, "scale: Extra inputs are not permitted"),
    ({"prompt": PROMPT, "layer": 4}, 400, r"layer\(s\) \[4\] out of range.*0..3"),
    ({"prompt": PROMPT}, 400, "needs 'layer'"),
    ({"prompt": PROMPT, "layer": 1, "position": 40}, 400, "positions"),
    ({"vectors": [[0.1] * 128] * 65}, 413, "too many vectors: 65 > 64"),
    ({"vectors": [[0.1] * 128], "max_new_tokens": 999}, 413, "max_new_tokens 999 > 256"),
    ({"vectors": [[0.1] * 128], "top_p": 0}, 422, "top_p"),
]


@pytest.mark.parametrize("body,status,message", BAD)
def test_bad_describe_input_is_a_one_line_4xx(client, body, status, message):
    text = body if isinstance(body, str) else json.dumps(body)
    r = client.post("/describe", content=text, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert "\n" not in error
    assert re.search(message, error), error
    assert client.get("/info").status_code == 200  # still serving


def test_other_endpoints_reject_bad_input(client):
    cases = [("/lens", {"prompt": PROMPT * 3, "layers": [0, 1, 2, 3]}, 413, "lens cells (layers × tokens): 92 > 64"),
             ("/lens", {"prompt": " ", "layers": [0]}, 400, "empty"),
             ("/extract", {"prompts": [], "layers": [0]}, 400, "no prompts"),
             ("/extract", {"prompts": ["a"], "layers": [-1]}, 400, "out of range"),
             ("/compare", {"a": {"vectors": [[0.1] * 128] * 2}, "b": {"vectors": [0.1] * 128}}, 400, "one vector"),
             ("/nope", {}, 404, "Not Found")]
    for path, body, status, message in cases:
        r = client.post(path, json=body)
        assert r.status_code == status and message in r.json()["error"], (path, r.text)


def test_oversize_body_is_413_by_length_or_while_streaming(client):
    body = [b'{"vectors": [', b"0.5, " * 300_000, b"0.5]}"]
    r = client.post("/describe", content=b"".join(body), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]
    chunked = client.post("/describe", content=iter(body), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "--max-body-mb" in chunked.json()["error"]


def test_a_body_that_is_not_json_says_how_to_send_json(client):
    r = client.post("/describe", content='{"vectors": [0.5]}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "curl: --json" in r.json()["error"]


def test_adapter_mode_without_adapter_is_refused(toy):
    model, tok, _ = toy
    with TestClient(create_app(Service(model, tok))) as c:
        r = c.post("/describe", json={"vectors": [0.1] * 128, "mode": "adapter"})
        assert r.status_code == 400 and "no adapter" in r.json()["error"]
        assert c.get("/info").json()["modes"] == ["baseline"]


def test_bearer_token_guards_the_api_but_not_the_page(toy):
    model, tok, _ = toy
    with TestClient(create_app(Service(model, tok), token="s3cret")) as c:
        assert c.get("/info").status_code == 401
        assert c.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/describe", json={"vectors": [0.1] * 128})
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert c.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/").status_code == 200 and c.get("/static/explorer.js").status_code == 200


def test_page_ships_without_external_resources(client):
    page = client.get("/").text
    assert 'id="prompt"' in page and 'id="grid"' in page
    for asset in ("explorer.js", "explorer.css"):
        assert f"/static/{asset}" in page
        assert client.get(f"/static/{asset}").status_code == 200
    for text in (page, client.get("/static/explorer.js").text, client.get("/static/explorer.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN


def test_cli_serve_binds_loopback_and_passes_the_token(monkeypatch, capsys):
    import uvicorn

    from selfie_adapters.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", "--model", "toy", "--port", "8123", "--token", "t0k", "--max-vectors", "7"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    with TestClient(seen["app"]) as c:
        assert c.get("/info").status_code == 401
        info = c.get("/info", headers={"Authorization": "Bearer t0k"}).json()
        assert info["limits"]["max_vectors"] == 7 and info["layers"] == 4
    assert main(["serve", "--model", "toy", "--host", "0.0.0.0"]) == 0
    assert "without --token" in capsys.readouterr().err


def test_max_new_tokens_defaults_to_the_model_familys(toy):
    """A request without max_new_tokens gets the family's bound (the toy model closes turns with <|eot_id|>:
    the Llama-3 family, 40), as `selfie describe` does; one with it keeps its own."""
    model, tok, adapter = toy
    service = Service(model, tok, adapter)
    assert service.settings("adapter", max_new_tokens=None).max_new_tokens == 40
    assert service.settings("baseline", max_new_tokens=7).max_new_tokens == 7


# ---------------------------------------------------------------- /ask

ASK = "What colour is {vector}?"


def test_ask_free_and_choices_match_the_library(client, toy):
    model, tok, adapter = toy
    torch.manual_seed(5)
    vecs = torch.randn(3, 128)
    interp = Interpreter(model, tok, adapter)
    body = {"vectors": vecs.tolist(), "question": ASK, "max_new_tokens": 6}
    got = post_ok(client, "/ask", body)
    want = interp.ask(vecs, ASK, max_new_tokens=6)
    assert got["mode"] == "adapter" and [r["answer"] for r in got["rows"]] == [a.answer for a in want]
    assert {r["question"] for r in got["rows"]} == {ASK}
    body = {"vectors": vecs.tolist(), "question": ASK, "choices": [" red", " blue", " green"],
            "answer_prefix": "{vector} is"}
    got = post_ok(client, "/ask", body)
    want = interp.ask(vecs, ASK, choices=[" red", " blue", " green"], answer_prefix="{vector} is")
    assert [r["choice"] for r in got["rows"]] == [a.choice for a in want]
    for r, a in zip(got["rows"], want):
        assert r["probs"] == pytest.approx(a.probs, rel=1e-4, abs=1e-6)


def test_ask_prompt_state_and_stream(client):
    body = {"prompt": PROMPT, "layer": 1, "question": ASK, "choices": [" red", " blue"],
            "answer_prefix": "{vector} is", "mode": "baseline", "scales": [2.0, 4.0]}
    rows = post_ok(client, "/ask", body)["rows"]
    assert [(r["index"], r["scale"]) for r in rows] == [(0, 2.0), (0, 4.0)]
    r = client.post("/ask", json={**body, "stream": True})
    assert r.status_code == 200
    streamed = [json.loads(line) for line in r.text.splitlines()]
    for s, x in zip(streamed, rows, strict=True):
        assert s["probs"] == pytest.approx(x["probs"])


def test_concurrent_asks_and_describes_do_not_mix(toy):
    model, tok, adapter = toy
    service = Service(model, tok, adapter)

    async def both():
        torch.manual_seed(6)
        v = torch.randn(2, 128)
        s = service.settings("adapter", None, 1, 2, max_new_tokens=4)
        asked = service.ask_settings("adapter", s, ASK, [" red", " blue"], "{vector} is")
        jobs = [service.describe(v, s, "adapter"), service.describe(v, asked, "adapter")]
        return [await j.collect() for j in jobs]

    import asyncio

    service.start()
    try:
        described, asked = asyncio.run(both())
    finally:
        service.stop()
    assert all(hasattr(d, "label") for d in described) and all(hasattr(a, "probs") for a in asked)


@pytest.mark.parametrize("body, message", [
    ({"vectors": [[0.5] * 128], "question": "What colour is it?"}, "has no {vector}"),
    ({"vectors": [[0.5] * 128], "question": ASK, "choices": ["red", ""]}, "is empty"),
    ({"vectors": [[0.5] * 128], "question": ASK, "choices": ["red"]}, "at least two choices"),
    ({"vectors": [[0.5] * 128], "question": ASK, "choices": ["a", "b"], "samples": 2}, "'samples' is for free"),
    ({"vectors": [[0.5] * 128], "question": ASK, "relevancy": True}, "'relevancy' is for /describe"),
    ({"vectors": [[0.5] * 128] * 65, "question": ASK}, "max-vectors"),
    ({"vectors": [[0.5] * 128]}, "question"),
])
def test_bad_ask_input_is_a_one_line_4xx(client, body, message):
    r = client.post("/ask", json=body)
    assert 400 <= r.status_code < 500 and message in r.json()["error"], r.text

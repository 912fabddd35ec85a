"""`--model` values that name no model fail at once, offline, with one `error:` line that suggests the
closest catalogue names; a long load shows "loading MODEL…" and its time."""

from __future__ import annotations

import socket

import pytest

from selfie_adapters.cli import display, main


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network (or to load a model) fails the test."""
    def refuse(*a, **k):
        pytest.fail(f"the network was asked: {a[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def extract(capsys, tmp_path, model):
    (tmp_path / "p.txt").write_text("Tell me about Paris.\n")
    code = main(["extract", "--model", model, "--layer", "1", "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("offline", ["1", ""])
def test_a_typo_in_a_short_name_suggests_the_catalogue_name(offline, no_network, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("a bare name was looked up"))
    line = extract(capsys, tmp_path, "smollm2-135m")
    assert "unknown model 'smollm2-135m'" in line and "did you mean smollm2-135m-instruct?" in line
    assert "`selfie models`" in line


def test_a_hub_id_offline_and_not_cached_fails_at_once(no_network, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    line = extract(capsys, tmp_path, "someorg/some-model")
    assert "'someorg/some-model' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in line


def test_a_hub_id_without_network_fails_at_once(no_network, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))

    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    line = extract(capsys, tmp_path, "someorg/some-model")
    assert "huggingface.co cannot be reached (no network?)" in line


def test_a_long_load_says_so_and_a_quick_one_is_silent(tiny_model_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "p.txt").write_text("Tell me about Paris.\n")
    argv = ["extract", "--model", str(tiny_model_dir), "--layer", "1", "--prompts", str(tmp_path / "p.txt")]
    monkeypatch.setattr(display, "SLOW_LOAD_S", 60.0)  # quicker than this: nothing said
    assert main([*argv, "--out", str(tmp_path / "a.safetensors")]) == 0
    assert "loading" not in capsys.readouterr().err
    monkeypatch.setattr(display, "SLOW_LOAD_S", 0.0)  # slower: the line and the time
    assert main([*argv, "--out", str(tmp_path / "b.safetensors")]) == 0
    err = capsys.readouterr().err
    assert f"loading {tiny_model_dir}…" in err and f"loaded {tiny_model_dir} in " in err

"""A dequantised GGUF is kept in the user's cache (SELFIE_CACHE: a temp folder in tests, see conftest):
the second load reads it, with the same weights bit for bit and the same tokenizer; a killed writer
leaves nothing a later load trusts."""

from __future__ import annotations

import json
import os

import pytest
import torch

from selfie_adapters.models import gguf_cache
from selfie_adapters.models.catalogue import resolve_model
from selfie_adapters.models.loading import load_model
from selfie_adapters.testing import make_chatml_tokenizer, write_tiny_gguf

pytest.importorskip("gguf")
CHAT = [{"role": "user", "content": "Tell me about Paris."}]
TEXTS = ["What is the meaning of this?", "Tell me about Paris. <|im_end|> x", "zq ünïcödé 123"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    chatml = make_chatml_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(chatml), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, LlamaForCausalLM(cfg).eval(), chatml)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFIE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / gguf_cache.SUBDIR


def direct_load(path):
    """The GGUF loaded by transformers itself, as before the cache: the reference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, tok


def assert_same_model(got, want):
    (model, tok), (ref, ref_tok) = got, want
    a, b = model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k  # bit for bit
    for text in TEXTS:
        assert tok(text)["input_ids"] == ref_tok(text)["input_ids"], text
    assert (tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
            == ref_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == \
        (ref_tok.bos_token_id, ref_tok.eos_token_id, ref_tok.pad_token_id, len(ref_tok))
    assert model.generation_config.eos_token_id == ref.generation_config.eos_token_id


def test_second_load_reads_the_cache_with_the_same_model(tiny_gguf, cache, monkeypatch):
    reference = direct_load(tiny_gguf)
    first = load_model(str(tiny_gguf))
    [folder] = [p for p in cache.iterdir()]
    assert folder.name.startswith("tiny-") and (folder / gguf_cache.MARKER).is_file()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    monkeypatch.setattr(gguf_cache, "dequantise", lambda *a: pytest.fail("dequantised again"))
    second = load_model(str(tiny_gguf))
    assert_same_model(first, reference)
    assert_same_model(second, reference)
    assert second[0].config._name_or_path == str(tiny_gguf) and second[0].dtype == torch.float32
    assert load_model(str(tiny_gguf), dtype="bfloat16")[0].dtype == torch.bfloat16


def test_a_killed_writer_leaves_nothing_trusted(tiny_gguf, cache):
    source = resolve_model(str(tiny_gguf))
    folder = gguf_cache.cache_folder(source, gguf_cache.gguf_fingerprint(tiny_gguf))
    dead = folder.parent / f".tmp-{folder.name}-999999999"  # killed mid-write: weights, no marker
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"half")
    folder.mkdir()  # a folder at the final name without its marker (not ours to trust either)
    (folder / "model.safetensors").write_bytes(b"junk")
    assert not gguf_cache.is_complete(folder, gguf_cache.gguf_fingerprint(tiny_gguf))
    assert_same_model(load_model(str(tiny_gguf)), direct_load(tiny_gguf))
    assert sorted(p.name for p in cache.iterdir()) == [folder.name]  # the dead writer's temp folder is gone
    assert gguf_cache.is_complete(folder, gguf_cache.gguf_fingerprint(tiny_gguf))


def test_a_changed_file_is_dequantised_again(tiny_gguf, cache, tmp_path):
    copy = tmp_path / "tiny.gguf"
    copy.write_bytes(tiny_gguf.read_bytes())
    first_mtime = copy.stat().st_mtime_ns
    load_model(str(copy))
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))  # touched: maybe rewritten, so not trusted
    load_model(str(copy))
    marks = [json.loads((p / gguf_cache.MARKER).read_text()) for p in cache.iterdir()]
    assert sorted(m["mtime_ns"] for m in marks) == sorted([1_000_000_000, first_mtime])


def test_an_unwritable_cache_still_loads_with_a_warning(tiny_gguf, tmp_path, monkeypatch, caplog):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("SELFIE_CACHE", str(tmp_path / "a-file" / "cache"))  # mkdir fails, even as root
    with caplog.at_level("WARNING", logger="selfie_adapters.models.gguf_cache"):
        assert_same_model(load_model(str(tiny_gguf)), direct_load(tiny_gguf))
    assert "cannot keep the dequantised" in caplog.text and "SELFIE_CACHE" in caplog.text


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from selfie_adapters.files import user_cache_dir

    monkeypatch.setenv("SELFIE_CACHE", str(tmp_path / "a"))
    assert user_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SELFIE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "selfie-adapters"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == (tmp_path.home() / ".cache" / "selfie-adapters")

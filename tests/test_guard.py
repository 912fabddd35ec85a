"""The model guard: wrong dimension always refused, wrong model refused unless opted in."""

import json

import pytest
import torch

from selfie_adapters import Adapter, Interpreter, SelfieError, build_projection, check_model
from selfie_adapters.adapters.guard import model_signature


def adapter_for(name, dim=64, **meta):
    return Adapter(build_projection("scalar_affine", dim), {"model_name": name, **meta})


def test_dimension_mismatch_always_refused(tiny_model):
    with pytest.raises(SelfieError, match="d=128 but the model's hidden size is 64"):
        check_model(adapter_for("tiny-llama", dim=128), tiny_model, allow_model_mismatch=True)


def test_name_mismatch_refused_unless_allowed(tiny_model, tokenizer):
    with pytest.raises(SelfieError, match="trained on 'other/model'.*allow_model_mismatch=True"):
        Interpreter(tiny_model, tokenizer, adapter_for("other/model"))
    with pytest.warns(UserWarning, match="mismatch allowed"):
        Interpreter(tiny_model, tokenizer, adapter_for("other/model"), allow_model_mismatch=True)
    check_model(adapter_for("tiny-llama"), tiny_model)


def test_signature_lets_a_local_copy_pass(tiny_model):
    sig = json.dumps(model_signature(tiny_model))
    check_model(adapter_for("/somewhere/else/my-copy", model_signature=sig), tiny_model)
    bad = json.loads(sig) | {"num_hidden_layers": 99}
    with pytest.raises(SelfieError, match="num_hidden_layers=4 \\(expected 99\\)"):
        check_model(adapter_for("x", model_signature=json.dumps(bad)), tiny_model)


def test_a_field_one_side_does_not_record_is_not_a_mismatch(tiny_model):
    """An adapter trained on a GGUF read directly records architectures=None; the same model loaded from
    the GGUF cache (save_pretrained) reports ['LlamaForCausalLM']. Both directions must pass."""
    sig = model_signature(tiny_model)
    arch = tiny_model.config.architectures
    try:
        tiny_model.config.architectures = ["LlamaForCausalLM"]  # as the cache's copy reports
        check_model(adapter_for("smollm2", model_signature=json.dumps(sig | {"architectures": None})), tiny_model)
        with pytest.raises(SelfieError, match="architectures"):
            check_model(adapter_for("smollm2", model_signature=json.dumps(sig | {"architectures": ["X"]})),
                        tiny_model)
        tiny_model.config.architectures = None  # as the GGUF read directly reports
        check_model(adapter_for("smollm2", model_signature=json.dumps(sig | {"architectures": ["X"]})), tiny_model)
    finally:
        tiny_model.config.architectures = arch


def test_published_model_name_checked_by_config(tiny_model):
    """A 64-d tiny model is not Llama-3.1-8B-Instruct even with a matching adapter size."""
    with pytest.raises(SelfieError, match="hidden_size=64 \\(expected 4096\\)"):
        check_model(adapter_for("meta-llama/Meta-Llama-3.1-8B-Instruct"), tiny_model)


def test_local_copy_of_llama31_instruct_passes_and_base_model_fails():
    from transformers import LlamaConfig

    class Fake:  # a config-only stand-in: the guard reads nothing else
        def __init__(self, eos, name):
            self.config = LlamaConfig(hidden_size=4096, num_hidden_layers=32, vocab_size=128256,
                                      architectures=["LlamaForCausalLM"], eos_token_id=eos)
            self.config._name_or_path = name
            self.generation_config = None

    a = Adapter(build_projection("scalar_affine", 4096), {"model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct"})
    check_model(a, Fake([128001, 128008, 128009], "/models/llama31-instruct-local"))
    with pytest.raises(SelfieError, match="eos_token_id"):
        check_model(a, Fake(128001, "/models/llama31-base"))
    assert torch.is_tensor(a.transform(torch.randn(4096)))

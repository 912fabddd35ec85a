"""The reference implementation's documented Python usage, run unchanged against this package.

Each test is written the way the reference's README, eval scripts and users' notebooks use its
`selfie_adapters` package (same imports, same calls); the fixtures write the files its trainer writes.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

DIM = 16


def write_checkpoint(path, ptype="scalar_affine", rank=None, seed=0):
    """A checkpoint as the reference trainer saves it (projection_state + config + metadata keys)."""
    from selfie_adapters.projection import create_projection_module

    torch.manual_seed(seed)
    proj = create_projection_module(ptype, DIM, True, "cpu", init_scale=5.0, low_rank_rank=rank,
                                    low_rank_init_factor=0.01)
    with torch.no_grad():
        for p in proj.parameters():
            p.add_(0.1 * torch.randn_like(p))  # "trained"
    config = {"projection": {"type": ptype, "normalize_input": True, "init_scale": 5.0, "low_rank_rank": rank,
                             "low_rank_init_factor": 0.01},
              "model": {"name": "meta-llama/Meta-Llama-3.1-8B-Instruct"}, "training": {"direction_learning_rate": None}}
    torch.save({"projection_state": proj.state_dict(), "config": config, "model_dim": DIM, "global_step": 1000,
                "best_val_loss": 2.368, "projection_num_params": proj.num_parameters(),
                "checkpoint_format_version": 1}, path)
    return proj


def test_readme_quick_start(tmp_path):
    # README "Loading a Trained Adapter for Inference", verbatim apart from the file and vectors
    from selfie_adapters import load_adapter

    write_checkpoint(tmp_path / "checkpoint.pt")
    sae_vectors = torch.randn(4, DIM)
    adapter = load_adapter(str(tmp_path / "checkpoint.pt"))
    soft_tokens = adapter.transform(sae_vectors)
    meta = adapter.get_metadata()
    assert soft_tokens.shape == (4, DIM)
    assert meta == {"projection_type": "scalar_affine", "model_dim": DIM, "normalize_input": True,
                    "num_parameters": DIM + 1, "device": "cpu", "checkpoint_format_version": 1,
                    "global_step": 1000, "best_val_loss": 2.368, "init_scale": 5.0, "low_rank_init_factor": 0.01}


def test_selfie_adapter_class_as_the_eval_scripts_use_it(tmp_path):
    from selfie_adapters import SelfIEAdapter
    from selfie_adapters.inference import SelfIEAdapter as FromModule

    proj = write_checkpoint(tmp_path / "checkpoint.pt")
    adapter = SelfIEAdapter(str(tmp_path / "checkpoint.pt"), device="cpu")
    assert FromModule is SelfIEAdapter and adapter.model_dim == DIM and adapter.config["type"] == "scalar_affine"
    assert adapter.global_step == 1000 and adapter.checkpoint_format_version == 1
    scale, bias = proj.log_scale.exp().item(), proj.bias.detach()
    stats = adapter.get_projection_stats()
    assert set(stats) == {"scale", "bias_norm"} and stats["scale"] == pytest.approx(scale)
    assert stats["bias_norm"] == pytest.approx(bias.norm().item())
    x = torch.randn(3, DIM)
    torch.testing.assert_close(adapter.transform(x, normalize_input=False), scale * x + bias)
    unit = x / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(adapter.transform(x), scale * unit + bias)  # its config normalises
    assert adapter.transform(x[0]).shape == (DIM,)  # a single vector stays a single vector
    assert adapter.transform(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert adapter.projection.normalize_input is True  # the override did not stick


@pytest.mark.parametrize("ptype, cls_name, rank, n_params", [
    ("scale_only", "ScaleOnlyProjection", None, 1),
    ("scalar_affine", "ScalarAffineProjection", None, DIM + 1),
    ("full_rank", "FullRankAffineProjection", None, DIM * DIM + DIM),
    ("low_rank_only", "LowRankOnlyProjection", 4, 2 * DIM * 4 + DIM),
    ("scalar_affine_plus_low_rank", "ScalarAffinePlusLowRankProjection", 4, 1 + 2 * DIM * 4 + DIM),
])
def test_create_projection_module_and_classes(tmp_path, ptype, cls_name, rank, n_params):
    import selfie_adapters
    from selfie_adapters import ProjectionModule, create_projection_module, load_adapter
    from selfie_adapters.projection import create_projection_module as from_module

    assert from_module is create_projection_module
    proj = create_projection_module(projection_type=ptype, dim=DIM, normalize_input=True, device="cpu",
                                    init_scale=5.0, low_rank_rank=rank, low_rank_init_factor=0.01)
    assert type(proj).__name__ == cls_name and isinstance(proj, getattr(selfie_adapters, cls_name))
    assert isinstance(proj, ProjectionModule) and proj.num_parameters() == n_params
    if hasattr(proj, "log_scale"):
        assert proj.get_scale() == pytest.approx(5.0)
    if hasattr(proj, "bias"):
        assert proj.get_bias_norm() == 0.0
    if rank:
        assert proj.U.std().item() == pytest.approx(5.0 * 0.01 / math.sqrt(rank), rel=0.3)
        uv = proj.U @ proj.V.T
        torch.testing.assert_close(proj.get_singular_values(), torch.linalg.svdvals(uv)[:rank].detach())
        with pytest.raises(ValueError, match="low_rank_rank"):
            create_projection_module(ptype, DIM, True, "cpu")
    # a reference-style checkpoint of this projection loads back with identical outputs
    torch.save({"projection_state": proj.state_dict(), "config": {"projection": {
        "type": ptype, "normalize_input": True, "init_scale": 5.0, "low_rank_rank": rank}}, "model_dim": DIM},
        tmp_path / "p.pt")
    x = torch.randn(2, DIM)
    torch.testing.assert_close(load_adapter(tmp_path / "p.pt").transform(x), proj(x).detach())


def test_unknown_projection_type_is_a_value_error():
    from selfie_adapters import create_projection_module

    with pytest.raises(ValueError, match="Unknown projection type: diagonal"):
        create_projection_module("diagonal", DIM, True, "cpu")


def test_user_notebook_pipeline_matches_interpreter(tiny_model_dir, tmp_path):
    """The hand-rolled SelfIE loop users write against the reference (normalise, scale, adapter with
    normalize_input=False, inject at both sites, generate, cut at the last quote) = our Interpreter."""
    from selfie_adapters import Interpreter, load_adapter
    from selfie_adapters.sae_utils import ObservableLanguageModel

    model = ObservableLanguageModel(str(tiny_model_dir), device="cpu", dtype=torch.float32)
    tok, hf, dev = model.tokenizer, model._original_model, model.device
    assert model.hidden_size == 64 and tok.pad_token is not None
    torch.manual_seed(0)
    ckpt = tmp_path / "a.pt"
    from selfie_adapters.projection import create_projection_module

    proj = create_projection_module("scalar_affine", 64, True, "cpu", init_scale=3.0)
    with torch.no_grad():
        proj.bias.normal_()
    torch.save({"projection_state": proj.state_dict(), "config": {"projection": {
        "type": "scalar_affine", "normalize_input": True, "init_scale": 3.0},
        "model": {"name": str(tiny_model_dir)}}}, ckpt)
    adapter = load_adapter(str(ckpt))
    reserved = "<|reserved_special_token_0|>"
    template = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
                f'What is the meaning of "{reserved}"?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
                f'The meaning of "{reserved}" is "')
    ids = tok(template, return_tensors="pt", add_special_tokens=False)["input_ids"].to(dev)
    sites = [i for i, t in enumerate(ids[0]) if t == tok.convert_tokens_to_ids(reserved)]
    vectors, scale = torch.randn(3, 64), 2.1
    v = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-8) * scale
    soft = adapter.transform(v, normalize_input=False)
    emb = hf.model.embed_tokens(ids).expand(3, -1, -1).clone()
    for p in sites:
        emb[:, p, :] = soft
    out = hf.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                      max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = [tok.decode(o, skip_special_tokens=True, clean_up_tokenization_spaces=False) for o in out]
    theirs = [t.rsplit('"', 1)[0] if '"' in t else t for t in texts]
    ours = Interpreter(hf, tok, adapter).describe(vectors, scales=[scale], max_new_tokens=6)
    assert sites == [11, 22] and [d.label for d in ours] == [t.strip() for t in theirs]


def test_load_sae_passes_through_to_sae_lens(monkeypatch):
    calls = []

    class SAE:
        @staticmethod
        def from_pretrained(release, sae_id, device=None):
            calls.append((release, sae_id, device))
            return types.SimpleNamespace(W_dec=torch.zeros(3, DIM), cfg=types.SimpleNamespace(d_in=DIM, d_sae=3))

    monkeypatch.setitem(sys.modules, "sae_lens", types.SimpleNamespace(SAE=SAE))
    from selfie_adapters.sae_utils import load_sae

    sae = load_sae("goodfire-llama-3.1-8b-instruct", "layer_19", device="cpu")
    assert calls == [("goodfire-llama-3.1-8b-instruct", "layer_19", "cpu")] and sae.cfg.d_sae == 3

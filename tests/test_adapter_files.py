"""Adapter files: round trips, every metadata variant, legacy .pt, mean vectors, bad files."""

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from selfie_adapters import (
    PROJECTIONS,
    Adapter,
    SelfieError,
    build_projection,
    load_adapter,
    load_mean_vectors,
    save_mean_vectors,
)

D = 32


def make_adapter(kind, normalize=True):
    torch.manual_seed(1)
    p = build_projection(kind, D, rank=4, normalize_input=normalize, init_scale=5.0)
    with torch.no_grad():
        for t in p.parameters():
            t.add_(torch.randn_like(t) * 0.1)
    return Adapter(p, {"model_name": "meta-llama/Meta-Llama-3.1-8B-Instruct"})


@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
def test_save_load_round_trip(kind, tmp_path):
    a = make_adapter(kind)
    path = a.save(tmp_path / f"{kind}.safetensors", global_step=7)
    b = load_adapter(path)
    x = torch.randn(5, D)
    torch.testing.assert_close(a.transform(x), b.transform(x))
    assert b.kind == kind and b.dim == D and b.num_parameters() == a.num_parameters()
    assert b.metadata["global_step"] == "7" and b.metadata["model_dim"] == str(D)
    for key in ("projection_type", "model_name", "config_json", "normalize_input", "init_scale"):
        assert key in b.metadata
    c = load_adapter(b.save(tmp_path / "again.safetensors"))
    assert c.metadata == b.metadata


def published_like(tmp_path, meta, kind="scalar_affine_plus_low_rank"):
    torch.manual_seed(0)
    tensors = {"log_scale": torch.tensor([1.5]), "bias": torch.randn(D), "U": torch.randn(D, 4),
               "V": torch.randn(D, 4)}
    path = tmp_path / "pub.safetensors"
    save_file(tensors, str(path), metadata=meta)
    return path, tensors


def test_minimal_metadata_infers_dim_and_rank(tmp_path):
    cfg = {"projection": {"type": "scalar_affine_plus_low_rank", "normalize_input": False,
                          "init_scale": 5.0, "low_rank_rank": 4}}
    path, t = published_like(tmp_path, {"projection_type": "scalar_affine_plus_low_rank",
                                        "model_name": "m", "config_json": json.dumps(cfg)})
    a = load_adapter(path)
    assert a.dim == D and a.projection.rank == 4 and a.normalize_input is False
    x = torch.randn(D)
    torch.testing.assert_close(a.transform(x), torch.exp(t["log_scale"]) * x + (x @ t["U"]) @ t["V"].T + t["bias"])


def test_flat_keys_without_config_json(tmp_path):
    path, _ = published_like(tmp_path, {"projection_type": "scalar_affine_plus_low_rank", "model_name": "m",
                                        "model_dim": str(D), "normalize_input": "true", "low_rank_rank": "4"})
    a = load_adapter(path)
    assert a.normalize_input is True and a.projection.rank == 4


def test_normalize_override(tmp_path):
    path, t = published_like(tmp_path, {"projection_type": "scalar_affine_plus_low_rank", "model_name": "m",
                                        "normalize_input": "true"})
    x = torch.randn(D) * 10
    raw = torch.exp(t["log_scale"]) * x + (x @ t["U"]) @ t["V"].T + t["bias"]
    torch.testing.assert_close(load_adapter(path, normalize_input=False).transform(x), raw)
    a = load_adapter(path)
    torch.testing.assert_close(a.transform(x, normalize_input=False), raw)
    assert not torch.allclose(a.transform(x), raw)


def test_legacy_pt(tmp_path):
    a = make_adapter("scalar_affine")
    ckpt = {"projection_state": {k: v.clone() for k, v in a.projection.state_dict().items()},
            "config": {"projection": {"type": "scalar_affine", "normalize_input": True, "init_scale": 5.0},
                       "model": {"name": "meta-llama/Meta-Llama-3.1-8B-Instruct"}},
            "model_dim": D, "global_step": 10, "best_val_loss": 2.5, "projection_num_params": D + 1,
            "checkpoint_format_version": 1}
    torch.save(ckpt, tmp_path / "old.pt")
    b = load_adapter(tmp_path / "old.pt")
    x = torch.randn(D)
    torch.testing.assert_close(a.transform(x), b.transform(x))
    assert b.metadata["best_val_loss"] == "2.5" and b.model_name.endswith("Instruct")


class Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"projection_state": Boom()}, f)
    with pytest.raises(SelfieError, match="refusing to unpickle"):
        load_adapter(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_bad_files(tmp_path):
    with pytest.raises(SelfieError, match="file not found"):
        load_adapter(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a safetensors file")
    with pytest.raises(SelfieError, match="not a readable safetensors"):
        load_adapter(tmp_path / "junk.safetensors")
    save_file({"bias": torch.zeros(D)}, str(tmp_path / "u.safetensors"), metadata={"projection_type": "wat"})
    with pytest.raises(SelfieError, match="unknown projection type 'wat'"):
        load_adapter(tmp_path / "u.safetensors")
    save_file({"bias": torch.zeros(D)}, str(tmp_path / "m.safetensors"), metadata={"projection_type": "scalar_affine"})
    with pytest.raises(SelfieError, match=r"missing \['log_scale'\]"):
        load_adapter(tmp_path / "m.safetensors")
    save_file({"bias": torch.zeros(D), "log_scale": torch.zeros(2)}, str(tmp_path / "s.safetensors"),
              metadata={"projection_type": "scalar_affine"})
    with pytest.raises(SelfieError, match=r"'log_scale' has shape \(2,\), expected \(1,\)"):
        load_adapter(tmp_path / "s.safetensors")
    save_file({"bias": torch.full((D,), float("nan")), "log_scale": torch.zeros(1)}, str(tmp_path / "n.safetensors"),
              metadata={"projection_type": "scalar_affine"})
    with pytest.raises(SelfieError, match="NaN/Inf"):
        load_adapter(tmp_path / "n.safetensors")


def test_transform_rejects_wrong_dim_and_nan():
    a = make_adapter("scalar_affine")
    with pytest.raises(SelfieError, match="dimension 7 but the adapter expects 32"):
        a.transform(torch.randn(7))
    with pytest.raises(SelfieError, match="NaN/Inf"):
        a.transform(torch.full((D,), float("inf")))


def test_mean_vectors_round_trip(tmp_path):
    means = {19: torch.randn(D), 3: torch.randn(D)}
    out = load_mean_vectors(save_mean_vectors(means, tmp_path / "mean-vectors.safetensors"))
    assert set(out) == {3, 19} and out[19].dtype == torch.float32
    torch.testing.assert_close(out[19], means[19])


def test_hub_reference_uses_hf_hub(monkeypatch, tmp_path):
    a = make_adapter("scalar_affine")
    local = a.save(tmp_path / "goodfire-sae-scalar-affine.safetensors")
    calls = {}

    def fake_download(repo_id, filename):
        calls.update(repo_id=repo_id, filename=filename)
        return str(local)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    b = load_adapter("keenanpepper/selfie-adapters-llama-3.1-8b-instruct/goodfire-sae-scalar-affine.safetensors")
    assert calls == {"repo_id": "keenanpepper/selfie-adapters-llama-3.1-8b-instruct",
                     "filename": "goodfire-sae-scalar-affine.safetensors"}
    assert b.kind == "scalar_affine"

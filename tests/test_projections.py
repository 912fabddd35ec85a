"""Every adapter kind: exact formula, parameter count, dtype/shape contract."""

import math

import pytest
import torch

from selfie_adapters import PROJECTIONS, SelfieError, build_projection

D, R = 4096, 16
PUBLISHED_COUNTS = {"identity": 0, "scale_only": 1, "scalar_affine": 4097,
                    "scalar_affine_plus_low_rank": 135_169, "low_rank_only": 2 * D * R + D,
                    "full_rank": 16_781_312}


def reference(p, x):
    """The reference's formulas, written out by hand."""
    if p.normalize_input:
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    k = p.kind
    if k == "identity":
        return x
    if k == "scale_only":
        return torch.exp(p.log_scale) * x
    if k == "scalar_affine":
        return torch.exp(p.log_scale) * x + p.bias
    if k == "scalar_affine_plus_low_rank":
        return torch.exp(p.log_scale) * x + (x @ p.U) @ p.V.T + p.bias
    if k == "low_rank_only":
        return (x @ p.U) @ p.V.T + p.bias
    return x @ p.weight.T + p.bias


def test_registry_has_every_kind():
    assert set(PROJECTIONS) == set(PUBLISHED_COUNTS)


@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
def test_parameter_count_matches_published(kind):
    with torch.device("meta"):
        p = build_projection(kind, D, rank=R)
    assert p.num_parameters() == PUBLISHED_COUNTS[kind]


def test_rank_64_count():
    with torch.device("meta"):
        assert build_projection("scalar_affine_plus_low_rank", D, rank=64).num_parameters() == 528_385


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
def test_formula(kind, normalize):
    torch.manual_seed(0)
    p = build_projection(kind, 32, rank=4, normalize_input=normalize, init_scale=5.0)
    with torch.no_grad():
        for t in p.parameters():
            t.copy_(torch.randn_like(t) * 0.3)
        x = torch.randn(3, 7, 32)
        torch.testing.assert_close(p(x), reference(p, x))


@pytest.mark.parametrize("kind", sorted(PROJECTIONS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_returns_input_dtype_and_shape(kind, dtype):
    p = build_projection(kind, 16, rank=2)
    for shape in [(16,), (4, 16), (2, 3, 16)]:
        y = p(torch.randn(shape).to(dtype))
        assert y.dtype == dtype and y.shape == shape


def test_init_values():
    p = build_projection("scalar_affine_plus_low_rank", 1024, rank=16, init_scale=5.0, init_factor=0.01)
    assert p.log_scale.item() == pytest.approx(math.log(5.0))
    assert torch.all(p.bias == 0)
    assert p.U.std().item() == pytest.approx(5.0 * 0.01 / 4, rel=0.1)
    full = build_projection("full_rank", 512, init_scale=5.0)
    assert full.weight.std().item() == pytest.approx(5.0 * math.sqrt(2 / 1024), rel=0.05)


def test_normalisation_eps_handles_zero_vector():
    p = build_projection("scalar_affine", 8)
    assert torch.isfinite(p(torch.zeros(8))).all()


def test_unknown_kind_and_missing_rank():
    with pytest.raises(SelfieError, match="unknown projection type 'bogus'.*valid: identity"):
        build_projection("bogus", 8)
    with pytest.raises(SelfieError, match="needs a positive low_rank_rank"):
        build_projection("low_rank_only", 8)


def test_readme_documents_every_kind():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for kind in PROJECTIONS:
        assert f"| `{kind}` |" in readme, f"README's adapter table lacks {kind}"

"""Round-trip scores of a label: how well the vector comes back from it (the NLA metrics).

Both vectors are L2-normalised and scaled to √d, so ``mse_nrm = mean((p̂ − ĝ)²) = 2(1 − cos)`` (0–4);
``fve_nrm = 1 − mse_nrm / Var`` with Var the predict-the-training-mean baseline (the mean of the
normalised training targets, not re-normalised); ``centred_cos`` is the cosine after subtracting that
mean (the anisotropy-centred score).
"""

from __future__ import annotations

import math

import torch

from ..adapters.kinds import l2_normalize

SCORE_FIELDS = ("cos", "centred_cos", "mse_nrm", "fve_nrm")
BEST_BY = "mse_nrm"  # lower is better; the same order as cos


def normalised(x: torch.Tensor) -> torch.Tensor:
    """(..., d) → fp32, L2-normalised and scaled to √d."""
    return l2_normalize(x.float()) * math.sqrt(x.shape[-1])


def per_example_mse_nrm(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(b, d), (b, d) → (b,) mean over d of (p̂ − ĝ)², differentiable in ``pred`` (the training loss)."""
    return (normalised(pred) - normalised(target)).pow(2).mean(-1)


def baseline_stats(targets: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(N, d) training targets → (μ (d,), Var): the mean normalised target and the mse_nrm of predicting it."""
    g = normalised(targets)  # (N, d)
    mu = g.mean(0)  # (d,), not re-normalised
    return mu, float((g - mu).pow(2).mean())


def score(pred: torch.Tensor, target: torch.Tensor, mu: torch.Tensor | None = None,
          var: float | None = None) -> dict[str, list[float | None]]:
    """(N, d) predictions and targets → {field: N values}; fve_nrm / centred_cos are None without Var / μ."""
    p, g = normalised(pred), normalised(target)  # (N, d)
    d = p.shape[-1]
    cos = (p * g).sum(-1) / d  # both have norm √d
    mse = (p - g).pow(2).mean(-1)
    out: dict[str, list[float | None]] = {"cos": cos.tolist(), "mse_nrm": mse.tolist()}
    if mu is not None:
        mu = mu.float().to(p.device)
        out["centred_cos"] = torch.nn.functional.cosine_similarity(p - mu, g - mu, dim=-1, eps=1e-8).tolist()
    else:
        out["centred_cos"] = [None] * len(p)
    fve = (1.0 - mse / var).tolist() if var is not None and var > 0 else [None] * len(p)
    out["fve_nrm"] = fve
    return out


def score_rows(values: dict[str, list[float | None]]) -> list[dict[str, float | None]]:
    """{field: N values} → N dicts ``{"cos", "centred_cos", "mse_nrm", "fve_nrm"}`` (rounded to 6 places)."""
    n = len(values["cos"])
    return [{k: (None if values[k][i] is None else round(float(values[k][i]), 6)) for k in SCORE_FIELDS}
            for i in range(n)]


def auc(positive: list[float], negative: list[float]) -> float:
    """P(a positive scores above a negative), ties counted half (the Mann–Whitney AUC)."""
    if not positive or not negative:
        raise ValueError("auc needs at least one positive and one negative score")
    neg = torch.tensor(negative, dtype=torch.float64)
    wins = sum(float((p > neg).sum() + 0.5 * (p == neg).sum()) for p in positive)
    return wins / (len(positive) * len(negative))

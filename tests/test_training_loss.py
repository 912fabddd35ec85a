"""The fast loss equals an obviously-correct per-example implementation (real Llama-3 tokenizer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfie_adapters.interpret.template import PromptTemplate
from selfie_adapters.training.data import tokenize_targets
from selfie_adapters.training.loss import SelfieLoss, token_cross_entropy

LABELS = ["a red fruit.", 'The word "apple" in code', "Syntactical markers that introduce descriptions",
          "x", "Russian word состав and its variations, in long compound sentences about chemistry"]


def slow_loss(model, tokenizer, soft, labels, smoothing=0.0, max_loss=None):
    """Full forward per example over template + target, logits at every position, CE at the targets."""
    ids, sites = PromptTemplate().encode(tokenizer)
    losses = []
    for b, label in enumerate(labels):
        target = tokenizer(f'{label}"<|eot_id|>', add_special_tokens=False)["input_ids"]
        seq = torch.tensor(ids + target)
        emb = model.get_input_embeddings()(seq).clone()
        emb[sites] = soft[b].to(emb.dtype)
        logits = model(inputs_embeds=emb[None]).logits[0].float()  # (T, V)
        pred = logits[len(ids) - 1:len(seq) - 1]  # predicts the target tokens
        tok = F.cross_entropy(pred, torch.tensor(target), reduction="none", label_smoothing=smoothing)
        if max_loss is not None:
            tok = tok.clamp(max=max_loss)
        losses.append(tok.mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize(("prefix_cache", "smoothing", "max_loss"),
                         [(True, 0.0, None), (True, 0.1, 11.8), (False, 0.1, 11.8)])
def test_loss_matches_per_example_reference(tiny_model, tokenizer, prefix_cache, smoothing, max_loss):
    torch.manual_seed(0)
    soft = (torch.randn(len(LABELS), 64) * 3).requires_grad_()
    targets, lengths = tokenize_targets(tokenizer, LABELS, "<|eot_id|>")
    fast = SelfieLoss(tiny_model, tokenizer, label_smoothing=smoothing, max_loss=max_loss,
                      prefix_cache=prefix_cache)(soft, targets, lengths).mean()
    (g_fast,) = torch.autograd.grad(fast, soft)
    slow = slow_loss(tiny_model, tokenizer, soft, LABELS, smoothing, max_loss)
    (g_slow,) = torch.autograd.grad(slow, soft)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_slow, atol=1e-5, rtol=1e-4)


def test_clamp_is_active_and_cuts_gradient():
    torch.manual_seed(0)
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(50, 8) * 4
    y = torch.randint(0, 50, (6,))
    ref = F.cross_entropy(h @ w.T, y, reduction="none", label_smoothing=0.2)
    cap = float(ref.detach().median())
    ours = token_cross_entropy(h, w, y, label_smoothing=0.2, max_loss=cap)
    torch.testing.assert_close(ours, ref.clamp(max=cap))
    (g_ours,) = torch.autograd.grad(ours.sum(), h)
    (g_ref,) = torch.autograd.grad(ref.clamp(max=cap).sum(), h)
    torch.testing.assert_close(g_ours, g_ref)
    assert (g_ours[ref > cap] == 0).all()


def test_targets_end_with_quote_and_eos(tokenizer):
    targets, lengths = tokenize_targets(tokenizer, ["a red fruit."], "<|eot_id|>")
    ids = targets[0, :lengths[0]].tolist()
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.decode(ids[:-1]) == 'a red fruit."'

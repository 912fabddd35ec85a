"""The training / validation loss (the reference implementation's), computed fast.

Definition: cross-entropy of each target token given everything before it (per-token clamp at
``max_loss``, optional label smoothing), mean over an example's target tokens, mean over the batch.

How it is fast, with the same numbers as the slow per-example definition:
* the batch is built with tensor ops from pre-tokenised, right-padded targets (causal attention
  means right padding never influences real positions, so no attention mask is needed);
* the template prefix before the first injection site does not depend on the adapter: its KV
  cache is computed once and shared by every batch (expanded, not copied);
* logits are computed only at the target positions, in chunks, with a fused cross-entropy whose
  backward needs no stored logits (its gradient w.r.t. the hidden state is formed chunk by chunk
  in the forward pass and is only (n_tokens, d)).
The LM is frozen; gradients reach the soft tokens (and so the adapter) only.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import DynamicCache

from ..errors import SelfieError
from ..interpret.inject import embed_with_soft_tokens
from ..interpret.template import PromptTemplate, derive_template
from ..models.tree import base_model, cache_kw, model_device

MAX_LOGIT_ELEMENTS = 1 << 24  # per chunk: 16M fp32 logits = 64 MiB (130 tokens at vocab 128k)


class SelfieLoss:
    """Per-example SelfIE loss for a frozen causal LM.

    >>> loss_fn = SelfieLoss(model, tokenizer, PromptTemplate())
    >>> losses = loss_fn(soft, targets, lengths)     # (B, d), (B, L), (B,) → (B,)
    >>> losses.mean().backward()
    """

    def __init__(self, model, tokenizer, template: PromptTemplate | None = None, *, label_smoothing: float = 0.0,
                 max_loss: float | None = None, prefix_cache: bool = True,
                 autocast: torch.dtype | None = None) -> None:
        if getattr(model.config, "final_logit_softcapping", None):
            raise SelfieError(f"{type(model).__name__} uses final logit softcapping, which this loss does not "
                              "implement; use a model without it (e.g. Llama, Qwen, Mistral)")
        self.model, self.label_smoothing, self.max_loss = model, label_smoothing, max_loss
        self.autocast = autocast  # e.g. torch.bfloat16: the frozen blocks under autocast, the loss in fp32
        ids, sites = (template or derive_template(tokenizer)).encode(tokenizer)
        # With prefix caching, the forward pass starts at the first injection site.
        self.start = sites[0] if prefix_cache else 0
        device = model_device(model)
        self.prompt = torch.tensor(ids, dtype=torch.long, device=device)  # (T0,)
        self.site_mask = torch.zeros(len(ids), dtype=torch.bool, device=device)
        self.site_mask[sites] = True
        self._prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __call__(self, soft: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """soft (B, d), targets (B, L) right-padded, lengths (B,) → per-example mean token loss (B,) fp32."""
        device = self.prompt.device
        targets, lengths = targets.to(device), lengths.to(device)
        B, L = targets.shape
        suffix = self.prompt[self.start:]  # (S,)
        S = len(suffix)
        # input: template suffix, then the targets but the last (each token predicts the next one)
        ids = torch.cat([suffix.expand(B, S), targets[:, :-1]], dim=1)  # (B, S+L-1)
        sites = torch.cat([self.site_mask[self.start:].expand(B, S),
                           torch.zeros(B, L - 1, dtype=torch.bool, device=device)], dim=1)
        embeds = embed_with_soft_tokens(self.model, ids, sites, soft)  # (B, S+L-1, d)
        cache = self._cache(B)
        body = base_model(self.model)
        with self._autocast(device):
            out = body(inputs_embeds=embeds, use_cache=cache is not None, **cache_kw(body, cache))
        hidden = out.last_hidden_state[:, S - 1:S - 1 + L]  # (B, L, d): positions predicting the targets
        mask = torch.arange(L, device=device)[None, :] < lengths[:, None]  # (B, L)
        head = self.model.get_output_embeddings()
        tok_loss = token_cross_entropy(hidden[mask], head.weight, targets.to(hidden.device)[mask.to(hidden.device)],
                                       getattr(head, "bias", None), self.label_smoothing, self.max_loss)  # (n,)
        row = torch.arange(B, device=tok_loss.device)[:, None].expand(B, L)[mask.to(tok_loss.device)]  # (n,)
        per_example = torch.zeros(B, device=tok_loss.device).index_add(0, row, tok_loss)
        return per_example / lengths.to(tok_loss.device)

    def _autocast(self, device: torch.device):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast)

    def _cache(self, batch: int) -> DynamicCache | None:
        """A fresh cache holding the template prefix for ``batch`` rows (views of one computed copy)."""
        if self.start == 0:
            return None
        if self._prefix is None:
            cache = DynamicCache(config=self.model.config)
            with torch.no_grad():
                body = base_model(self.model)
                body(input_ids=self.prompt[None, :self.start], use_cache=True, **cache_kw(body, cache))
            self._prefix = [(layer.keys, layer.values) for layer in cache.layers]
        cache = DynamicCache(config=self.model.config)
        for i, (k, v) in enumerate(self._prefix):  # (1, H, P, Dh) → (B, H, P, Dh) views
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache


def token_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        bias: torch.Tensor | None = None, label_smoothing: float = 0.0,
                        max_loss: float | None = None) -> torch.Tensor:
    """Per-token CE of ``hidden @ weightᵀ (+ bias)`` against ``targets``, clamped at ``max_loss``.

    hidden (n, d), weight (V, d), targets (n,) → (n,) fp32; equals
    ``F.cross_entropy(logits.float(), targets, reduction="none", label_smoothing=ε).clamp(max=max_loss)``
    without keeping the (n, V) logits alive for the backward pass.
    """
    return _TokenCrossEntropy.apply(hidden, weight, bias, targets, float(label_smoothing),
                                    None if max_loss is None else float(max_loss))


class _TokenCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, smoothing, max_loss):
        n, V = hidden.shape[0], weight.shape[0]
        need_grad = ctx.needs_input_grad[0]
        losses = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad = torch.empty(n, hidden.shape[1], dtype=torch.float32, device=hidden.device) if need_grad else None
        chunk = max(1, MAX_LOGIT_ELEMENTS // V)
        w_sum = weight.float().sum(0) if (need_grad and smoothing) else None  # (d,)
        for s in range(0, n, chunk):
            h, y = hidden[s:s + chunk], targets[s:s + chunk]  # (c, d), (c,)
            z = (h.to(weight.dtype) @ weight.T).float()  # (c, V) logits in fp32
            if bias is not None:
                z += bias.float()
            z_y = z.gather(1, y[:, None])[:, 0]  # (c,)
            z_mean = z.mean(dim=-1) if smoothing else None
            # log-sum-exp by hand: torch.logsumexp is several times slower on CPU, and the
            # exponentials are reused for the gradient (no second pass over the logits)
            m = z.amax(dim=-1)  # (c,)
            e = z.sub_(m[:, None]).exp_()  # (c, V) = exp(z − m), in place
            total = e.sum(dim=-1)  # (c,)
            lse = m + total.log()
            loss = lse - z_y
            if smoothing:
                loss = (1 - smoothing) * loss + smoothing * (lse - z_mean)
            losses[s:s + chunk] = loss if max_loss is None else loss.clamp(max=max_loss)
            if need_grad:  # d loss / d h = (softmax − (1−ε)·onehot − ε/V) · W, zero where clamped
                g = (e.to(weight.dtype) @ weight).float() / total[:, None]  # softmax · W
                g -= (1 - smoothing) * weight[y].float()
                if smoothing:
                    g -= (smoothing / V) * w_sum
                if max_loss is not None:
                    g *= (loss <= max_loss)[:, None]
                grad[s:s + chunk] = g  # (c, d)
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad_out[:, None] * grad).to(ctx.hidden_dtype), None, None, None, None, None


def batch_mean_loss(per_example: torch.Tensor) -> torch.Tensor:
    """The published batch loss: mean over examples of the per-example mean token loss."""
    return per_example.mean()

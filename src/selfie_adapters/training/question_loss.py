"""The training loss when examples ask different questions: one :class:`SelfieLoss` per prompt.

Prompt 0 is the SelfIE template (plain labels = the meaning question); prompt k is the k-th question of
the labels file (with its answer prefix), rendered as `selfie ask` renders it
(``interpret.question.question_template``), with its own shared prefix cache. The loss is on the
answer's tokens only, as for labels. A batch without question examples (``prompts`` None) is exactly the
plain :class:`SelfieLoss` call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..interpret.question import QuestionPrompt, question_template
from ..interpret.template import PromptTemplate
from .loss import SelfieLoss


class QuestionLoss:
    """Per-example loss over examples that may each use another prompt.

    >>> loss_fn = QuestionLoss(model, tok, PromptTemplate(), ["Is {vector} a city?"])
    >>> loss_fn(soft, targets, lengths, prompts)     # (B, d), (B, L), (B,), (B,) → (B,)
    """

    def __init__(self, model, tokenizer, template: PromptTemplate, questions: Sequence[QuestionPrompt | str] = (),
                 **loss_kwargs) -> None:
        self.template = template
        self.questions = [q if isinstance(q, QuestionPrompt) else QuestionPrompt(q) for q in questions]
        prompts = [template] + [question_template(tokenizer, q.question, template.injection_token, q.answer_prefix)
                                for q in self.questions]
        self.losses = [SelfieLoss(model, tokenizer, p, **loss_kwargs) for p in prompts]

    def __call__(self, soft: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
                 prompts: torch.Tensor | None = None) -> torch.Tensor:
        """soft (B, d), targets (B, L), lengths (B,), prompts (B,) or None → per-example loss (B,) fp32."""
        if prompts is None:
            return self.losses[0](soft, targets, lengths)
        parts, order = [], []
        for k in prompts.unique().tolist():
            idx = (prompts == k).nonzero()[:, 0]  # (b_k,)
            n = lengths[idx]
            parts.append(self.losses[k](soft[idx.to(soft.device)], targets[idx][:, :int(n.max())], n))
            order.append(idx)
        inverse = torch.argsort(torch.cat(order)).to(parts[0].device)  # back to the batch's order
        return torch.cat(parts)[inverse]

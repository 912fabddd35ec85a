"""The model behind the server: one model, an adapter and a baseline interpreter, and the scheduler.

Everything here is plain Python over the library's public API (no web framework), so tests and
the benchmark can drive it directly. Request validation that needs the model (dimensions, layer
ranges, token counts) happens here, before any work is queued.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..adapters.artifact import Adapter, load_adapter
from ..interpret.describe import Interpreter
from ..interpret.template import PromptTemplate
from ..models.loading import load_model
from ..models.tokens import pad_token_id
from ..models.tree import decoder_layers, embedding_norm, logits_width, model_device
from ..vectors.hidden import extract_hidden_states, hidden_states_batch
from ..vectors.prompts import question_tokens, render_prompts
from ..vectors.tensor_files import load_mean_vectors
from .limits import Limits, RequestError
from .scheduler import MAX_STEP_LOGITS, DescribeJob, Scheduler, Settings

MODES = ("adapter", "baseline")


class Service:
    """Serve ``model`` with ``adapter`` (and the untrained baseline), micro-batching describe requests.

    >>> service = Service.load("meta-llama/Llama-3.1-8B-Instruct", adapter="goodfire-sae-scalar-affine.safetensors")
    >>> service.start(); job = service.describe(vectors, service.settings("adapter")); service.stop()
    """

    def __init__(self, model, tokenizer, adapter: Adapter | None = None, *,
                 means: dict[int, torch.Tensor] | None = None, template: PromptTemplate | str | None = None,
                 injection_token: str | None = None, inject_layer: int | None = None,
                 allow_model_mismatch: bool = False, limits: Limits | None = None,
                 batch_size: int = 128, batch_wait_ms: float = 5.0, max_step_logits: int = MAX_STEP_LOGITS,
                 adapter_source: str | None = None, reconstructor=None) -> None:
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.limits = limits or Limits()
        # requests merge into batches of any size: a CUDA graph (one compile per shape) would not pay off
        kw = {"template": template, "injection_token": injection_token, "inject_layer": inject_layer,
              "cuda_graphs": False}
        self.interpreters = {"baseline": Interpreter(model, tokenizer, None, **kw)}
        if adapter is not None:
            self.interpreters["adapter"] = Interpreter(model, tokenizer, adapter,
                                                       allow_model_mismatch=allow_model_mismatch, **kw)
        self.dim, self.n_layers = model.config.hidden_size, len(decoder_layers(model))
        self.means = {L: m.float().cpu() for L, m in (means or {}).items()}
        for L, m in self.means.items():
            if m.shape != (self.dim,):
                raise RequestError(f"mean vector layer_{L} has shape {tuple(m.shape)}, expected ({self.dim},)")
        # a baseline soft token as long as an average input embedding: a scale that fits any model
        self.baseline_scale = round(embedding_norm(model), 4)
        self.adapter_source = adapter_source
        self.scheduler = Scheduler(batch_size, batch_wait_ms / 1000, max_step_logits)
        self.scorer = None  # rows get round-trip scores when the server has a reconstructor
        if reconstructor is not None:
            from ..reconstruct.scorer import Scorer

            self.scorer = Scorer(model, tokenizer, reconstructor, allow_model_mismatch=allow_model_mismatch)

    @classmethod
    def load(cls, model: str, adapter: str | None = None, *, mean_vectors: str | None = None, dtype: str = "auto",
             device: str | None = None, template: str | None = None, injection_token: str | None = None,
             reconstructor: str | None = None, **kwargs) -> Service:
        """Load the model (once), the adapter, the mean vectors and the reconstructor from files or hub
        references. The prompt is ``template`` if given, else the adapter's, else the model family's (as in
        `selfie describe`)."""
        ad = load_adapter(adapter) if adapter else None
        rec = None
        if reconstructor:
            from ..reconstruct.artifact import load_reconstructor

            rec = load_reconstructor(reconstructor)
        means = load_mean_vectors(mean_vectors) if mean_vectors else None
        m, tok = load_model(model, dtype=dtype, device=device)
        return cls(m, tok, ad, means=means, adapter_source=adapter, template=template, injection_token=injection_token,
                   reconstructor=rec, **kwargs)

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    # --- checks -------------------------------------------------------------------------------------
    def mode(self, mode: str | None) -> str:
        """``adapter`` when one is loaded, else ``baseline``; asking for a missing adapter is an error."""
        mode = mode or ("adapter" if "adapter" in self.interpreters else "baseline")
        if mode not in self.interpreters:
            raise RequestError("this server has no adapter; use mode 'baseline' or start it with --adapter FILE")
        return mode

    def settings(self, mode: str, scales: Sequence[float] | None = None, samples: int = 1, vectors: int = 1,
                 **generation) -> Settings:
        """Generation settings with the mode's default scales, checked against the limits."""
        scales = tuple(float(s) for s in scales) if scales else self.interpreters[mode].default_scales
        if not scales:
            raise RequestError("'scales' is empty; give at least one scale or leave it out for the default")
        self.limits.check_generations(vectors, len(scales), samples)
        max_new = generation["max_new_tokens"] = (generation.get("max_new_tokens")
                                                  or self.interpreters[mode].default_max_new_tokens)
        if max_new > self.limits.max_new_tokens:
            raise RequestError(f"max_new_tokens {max_new} > {self.limits.max_new_tokens} (server flag "
                               "--max-new-tokens)", 413)
        return Settings(scales=scales, samples=samples, **generation)

    def request_layers(self, layers: Sequence[int]) -> list[int]:
        """A request's layers, sorted and unique; out of range is a 400 naming the valid range."""
        bad = [L for L in layers if not 0 <= L < self.n_layers]
        if bad or not layers:
            raise RequestError(f"layer(s) {bad or list(layers)} out of range; this model has layers "
                               f"0..{self.n_layers - 1} (layer L = residual stream after block L)")
        return sorted(set(layers))

    def contrast(self, vectors: torch.Tensor, layer: int | None) -> torch.Tensor:
        """Subtract the server's mean vector of ``layer`` when it has one (contrastive vectors)."""
        if layer is None or layer not in self.means:
            return vectors
        return vectors - self.means[layer]

    def use_chat(self, chat: bool | None) -> bool:
        """A request's ``chat``; unset: the chat template when the model has one (the CLI's default)."""
        return bool(getattr(self.tokenizer, "chat_template", None)) if chat is None else chat

    def _check_prompts(self, prompts: Sequence[str], chat: bool) -> list[list[int]]:
        self.limits.check_count("prompts", len(prompts), self.limits.max_vectors, "--max-vectors")
        if not prompts:
            raise RequestError("no prompts given")
        encoded = render_prompts(self.tokenizer, prompts, chat)
        longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
        if len(encoded[longest]) > self.limits.max_prompt_tokens:
            raise RequestError(f"prompt {longest} has {len(encoded[longest])} tokens > "
                               f"{self.limits.max_prompt_tokens} (server flag --max-prompt-tokens)", 413)
        return encoded

    def ask_settings(self, mode: str, settings: Settings, question: str, choices: Sequence[str] | None,
                     answer_prefix: str) -> Settings:
        """``settings`` for asking ``question``: the question, its prompt and the choices' tokens are checked
        here, before any model work (a bad one is a 400)."""
        from dataclasses import replace

        from ..interpret.ask import asking
        from ..interpret.question import choice_token_ids

        if settings.relevancy:
            raise RequestError("'relevancy' is for /describe; leave it out of /ask")
        view = asking(self.interpreters[mode], question, answer_prefix)
        if choices is not None:
            if settings.samples != 1:
                raise RequestError("'samples' is for free answers; with 'choices' each vector is scored once")
            choice_token_ids(self.tokenizer, view.template.text, choices)
        return replace(settings, question=question, answer_prefix=answer_prefix,
                       choices=tuple(choices) if choices is not None else None)

    # --- work ---------------------------------------------------------------------------------------
    async def scored(self, rows: list[dict], vectors: torch.Tensor, mark: bool = False) -> list[dict]:
        """``rows`` (``index`` = row of ``vectors``) with their round-trip scores, computed on the model thread,
        and with ``mark`` the best row per vector marked; unchanged when the server has no reconstructor."""
        if self.scorer is None or not rows:
            return rows
        from ..reconstruct.scorer import add_scores, mark_best

        rows = await self.scheduler.call(add_scores, rows, self.scorer, lambda i: vectors[i])
        return mark_best(rows) if mark else rows

    def describe(self, vectors: torch.Tensor, settings: Settings, mode: str,
                 indices: Sequence[int] | None = None) -> DescribeJob:
        """Queue (N, d) vectors for description; await ``job.stream()`` or ``job.collect()`` for the rows."""
        return self.scheduler.submit(DescribeJob(self.interpreters[mode], vectors, settings, indices))

    async def prompt_vectors(self, prompts: Sequence[str], layer: int, positions: int | Sequence[int] = -1,
                             chat: bool = False) -> torch.Tensor:
        """Hidden states after block ``layer`` at ``positions`` of each prompt, minus the layer mean if any:
        (N·P, d), prompt-major."""
        layer = self.request_layers([layer])[0]
        self._check_prompts(prompts, chat)
        states = await self.scheduler.call(extract_hidden_states, self.model, self.tokenizer, list(prompts), layer,
                                           positions=positions, chat=chat)
        return self.contrast(states[layer].reshape(-1, self.dim), layer)

    async def extract(self, prompts: Sequence[str], layers: Sequence[int], positions: int | Sequence[int] = -1,
                      chat: bool = False) -> dict[int, torch.Tensor]:
        """{L: (N, d) or (N, P, d)} fp32, as ``extract_hidden_states`` returns them."""
        layers = self.request_layers(layers)
        self._check_prompts(prompts, chat)
        return await self.scheduler.call(extract_hidden_states, self.model, self.tokenizer, list(prompts), layers,
                                         positions=positions, chat=chat)

    async def lens(self, prompt: str, layers: Sequence[int], settings: Settings, mode: str,
                   chat: bool = True) -> tuple[dict, DescribeJob]:
        """A layers × tokens grid: every layer's state at every prompt token from ONE forward pass, described.

        Columns run from the prompt's first token to the end of the rendered prompt (with ``chat``,
        the template's closing tokens too). Returns (grid header, describe job with layer-major rows).
        """
        layers = self.request_layers(layers)
        ids, positions = self.lens_positions(prompt, chat)
        self.limits.check_count("lens cells (layers × tokens)", len(layers) * len(positions),
                                self.limits.max_vectors, "--max-vectors")
        states = await self.scheduler.call(hidden_states_batch, self.model, [ids], layers,
                                           pad_token_id(self.tokenizer))  # {L: (1, T, d)}
        vectors = torch.cat([self.contrast(states[L][0, positions].float().cpu(), L) for L in layers])
        header = {"prompt": prompt, "chat": chat, "mode": mode, "layers": layers, "positions": positions,
                  "tokens": [self.tokenizer.decode([ids[p]]) for p in positions], "scales": list(settings.scales),
                  "samples": settings.samples}
        return header, self.describe(vectors, settings, mode)

    def lens_positions(self, prompt: str, chat: bool) -> tuple[list[int], list[int]]:
        """(token ids of the rendered prompt, positions from its first prompt token to the end)."""
        if not prompt.strip():
            raise RequestError("'prompt' is empty")
        ids, pos, _ = question_tokens(self.tokenizer, prompt, chat=chat)
        if len(ids) > self.limits.max_prompt_tokens:
            raise RequestError(f"the prompt has {len(ids)} tokens > {self.limits.max_prompt_tokens} "
                               "(server flag --max-prompt-tokens)", 413)
        if not pos:
            raise RequestError("the prompt has no tokens of its own after rendering")
        return ids, list(range(pos[0], len(ids)))

    def info(self) -> dict:
        """Model, adapter (as `selfie inspect` shows it), template, dimensions, layers, limits, load."""
        cfg, interp = self.model.config, self.interpreters["baseline"]
        return {
            "model": getattr(cfg, "_name_or_path", "") or type(self.model).__name__,
            "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
            "hidden_size": self.dim, "layers": self.n_layers, "vocab_size": getattr(cfg, "vocab_size", None),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(model_device(self.model)),
            "adapter": None if self.adapter is None else {"source": self.adapter_source, **self.adapter.summary()},
            "reconstructor": None if self.scorer is None else {
                k: v for k, v in self.scorer.rec.summary().items() if k != "config"},
            "modes": list(self.interpreters),
            "default_scales": {m: list(i.default_scales) for m, i in self.interpreters.items()},
            "lens_scale": {m: self.lens_scale(m) for m in self.interpreters},
            "template": interp.template.text, "injection_token": interp.template.injection_token,
            "injection_sites": interp.sites, "inject_layer": interp.inject_layer,
            "chat_template": bool(getattr(self.tokenizer, "chat_template", None)),
            "mean_layers": sorted(self.means),
            "limits": vars(self.limits),
            "batch_generations": self.scheduler.step_generations(logits_width(self.model)),
            "stats": {"pending_rows": self.scheduler.pending_rows(), **self.scheduler.stats},
        }

    def lens_scale(self, mode: str) -> float:
        """The lens uses one scale: the mode's only default, else the embedding-norm baseline scale."""
        scales = self.interpreters[mode].default_scales
        return scales[0] if len(scales) == 1 else self.baseline_scale

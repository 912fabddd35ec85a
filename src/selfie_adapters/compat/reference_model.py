"""The reference implementation's model/SAE helpers (``selfie_adapters.sae_utils``), over our loaders."""

from __future__ import annotations

import torch

from ..models.loading import load_model
from ..vectors.sae import load_sae as _load_sae


def load_sae(release: str, sae_id: str, device: str | torch.device | None = None):
    """An SAE from sae-lens (the ``sae`` extra), e.g. ``load_sae("goodfire-llama-3.1-8b-instruct", "layer_19")``."""
    return _load_sae(release, sae_id, str(device or "cpu"))


class ObservableLanguageModel:
    """The reference's model wrapper: ``tokenizer``, ``_original_model`` (the HF model), ``device``,
    ``hidden_size`` and ``generate_text``. ``device="auto"`` spreads the model over the GPUs.

    >>> model = ObservableLanguageModel("meta-llama/Meta-Llama-3.1-8B-Instruct", device="auto", dtype=torch.bfloat16)
    """

    def __init__(self, model: str, device: str = "cuda", dtype: torch.dtype | str | None = None,
                 cache_dir: str | None = None) -> None:
        source = model
        if cache_dir is not None:  # fetch into that cache, then load from the snapshot folder
            from huggingface_hub import snapshot_download

            source = snapshot_download(repo_id=model, cache_dir=cache_dir)
        self.model_name, self.dtype, self.device_map = model, dtype, device
        auto = device == "auto"
        self._original_model, self.tokenizer = load_model(source, dtype=dtype or "auto",
                                                          device=None if auto else device,
                                                          device_map="auto" if auto else None)
        embed = self._original_model.get_input_embeddings().weight
        self.device = embed.device if auto else torch.device(device)
        self.tokenizer.clean_up_tokenization_spaces = False
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.hidden_size = int(self._original_model.config.hidden_size)

    def generate_text(self, prompt: str, max_length: int = 100) -> str:
        """Sample (T 0.7) up to ``max_length`` new tokens after ``prompt``; the new text, stripped."""
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self._original_model.generate(**inputs, max_new_tokens=max_length, do_sample=True, temperature=0.7,
                                                pad_token_id=self.tokenizer.pad_token_id,
                                                eos_token_id=self.tokenizer.eos_token_id)
        new = out[0][inputs["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


__all__ = ["ObservableLanguageModel", "load_sae"]

"""The reference implementation's import path ``selfie_adapters.sae_utils`` (see ``compat.reference_model``)."""

from .compat.reference_model import ObservableLanguageModel, load_sae

__all__ = ["ObservableLanguageModel", "load_sae"]

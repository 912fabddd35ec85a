"""The reference implementation's import path ``selfie_adapters.inference`` (see ``compat.reference_adapter``)."""

from .compat.reference_adapter import SelfIEAdapter, load_adapter

__all__ = ["SelfIEAdapter", "load_adapter"]

"""selfie-adapters: let a language model describe its own internal vectors in words.

The flat public API below is imported on first use (``selfie_adapters.Adapter`` loads torch then), so
``import selfie_adapters`` and the ``selfie`` CLI start without torch or transformers (see ``_lazy.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

# public name → the module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    "Adapter": ".adapters.artifact", "load_adapter": ".adapters.artifact",
    "check_model": ".adapters.guard",
    "PROJECTIONS": ".adapters.kinds", "Projection": ".adapters.kinds", "build_projection": ".adapters.kinds",
    "SelfieError": ".errors",
    "read_safetensors": ".files", "save_tensors": ".files",
    "Description": ".interpret.describe", "Interpreter": ".interpret.describe",
    "generate": ".interpret.generate",
    "DescribeRun": ".interpret.resumable", "describe_source": ".interpret.resumable",
    "write_descriptions": ".interpret.resumable",
    "INJECTION_TOKEN": ".interpret.template", "SELFIE_TEMPLATE": ".interpret.template",
    "PromptTemplate": ".interpret.template",
    "load_model": ".models.loading",
    "extract_hidden_states": ".vectors.hidden", "mean_hidden_states": ".vectors.hidden",
    "decoder_rows": ".vectors.sae", "sae_decoder_vectors": ".vectors.sae",
    "load_mean_vectors": ".vectors.tensor_files", "load_vectors": ".vectors.tensor_files",
    "save_mean_vectors": ".vectors.tensor_files",
    # the reference implementation's API, at its names
    "SelfIEAdapter": ".compat.reference_adapter",
    "ObservableLanguageModel": ".compat.reference_model", "load_sae": ".compat.reference_model",
    "FullRankAffineProjection": ".compat.reference_projection",
    "LowRankOnlyProjection": ".compat.reference_projection", "ProjectionModule": ".compat.reference_projection",
    "ScalarAffinePlusLowRankProjection": ".compat.reference_projection",
    "ScalarAffineProjection": ".compat.reference_projection", "ScaleOnlyProjection": ".compat.reference_projection",
    "create_projection_module": ".compat.reference_projection",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # static analysers and IDEs see the real names (names: see _EXPORTS)
    from .adapters.artifact import Adapter, load_adapter  # noqa: F401
    from .adapters.guard import check_model  # noqa: F401
    from .adapters.kinds import PROJECTIONS, Projection, build_projection  # noqa: F401
    from .compat.reference_adapter import SelfIEAdapter  # noqa: F401
    from .compat.reference_model import ObservableLanguageModel, load_sae  # noqa: F401
    from .compat.reference_projection import (  # noqa: F401
        FullRankAffineProjection,
        LowRankOnlyProjection,
        ProjectionModule,
        ScalarAffinePlusLowRankProjection,
        ScalarAffineProjection,
        ScaleOnlyProjection,
        create_projection_module,
    )
    from .errors import SelfieError  # noqa: F401
    from .files import read_safetensors, save_tensors  # noqa: F401
    from .interpret.describe import Description, Interpreter  # noqa: F401
    from .interpret.generate import generate  # noqa: F401
    from .interpret.resumable import DescribeRun, describe_source, write_descriptions  # noqa: F401
    from .interpret.template import INJECTION_TOKEN, SELFIE_TEMPLATE, PromptTemplate  # noqa: F401
    from .models.loading import load_model  # noqa: F401
    from .vectors.hidden import extract_hidden_states, mean_hidden_states  # noqa: F401
    from .vectors.sae import decoder_rows, sae_decoder_vectors  # noqa: F401
    from .vectors.tensor_files import load_mean_vectors, load_vectors, save_mean_vectors  # noqa: F401

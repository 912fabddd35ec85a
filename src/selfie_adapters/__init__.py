"""selfie-adapters: let a language model describe its own internal vectors in words."""

from .adapters.artifact import Adapter, load_adapter
from .adapters.guard import check_model
from .adapters.kinds import PROJECTIONS, Projection, build_projection
from .compat.reference_adapter import SelfIEAdapter
from .compat.reference_model import ObservableLanguageModel, load_sae
from .compat.reference_projection import (  # the reference implementation's names, at its import paths
    FullRankAffineProjection,
    LowRankOnlyProjection,
    ProjectionModule,
    ScalarAffinePlusLowRankProjection,
    ScalarAffineProjection,
    ScaleOnlyProjection,
    create_projection_module,
)
from .errors import SelfieError
from .files import read_safetensors, save_tensors
from .interpret.describe import Description, Interpreter
from .interpret.generate import generate
from .interpret.resumable import DescribeRun, describe_source, write_descriptions
from .interpret.template import INJECTION_TOKEN, SELFIE_TEMPLATE, PromptTemplate
from .models.loading import load_model
from .vectors.hidden import extract_hidden_states, mean_hidden_states
from .vectors.sae import decoder_rows, sae_decoder_vectors
from .vectors.tensor_files import load_mean_vectors, load_vectors, save_mean_vectors

__all__ = [
    "INJECTION_TOKEN", "PROJECTIONS", "SELFIE_TEMPLATE", "Adapter", "DescribeRun", "Description", "Interpreter",
    "Projection",
    "PromptTemplate", "SelfieError", "build_projection", "check_model", "decoder_rows", "extract_hidden_states",
    "generate", "load_adapter", "load_mean_vectors", "load_model", "load_vectors", "mean_hidden_states",
    "read_safetensors", "sae_decoder_vectors", "save_mean_vectors", "save_tensors", "describe_source",
    "write_descriptions",
    # the reference implementation's API
    "FullRankAffineProjection", "LowRankOnlyProjection", "ObservableLanguageModel", "ProjectionModule",
    "ScalarAffinePlusLowRankProjection", "ScalarAffineProjection", "ScaleOnlyProjection", "SelfIEAdapter",
    "create_projection_module", "load_sae",
]

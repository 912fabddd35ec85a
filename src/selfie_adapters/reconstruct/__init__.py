"""The reverse direction, text → vector: a reconstructor reads a label with the frozen subject model and
maps the state back to the vector space the label describes; its round-trip scores say how much to
trust a label (NLA's mse_nrm / fve_nrm, cosine, centred cosine).

Modules: ``reader`` (the prompt around a label, the truncated forward), ``artifact`` (``Reconstructor``,
the single-file format), ``scores`` (the metrics), ``scorer`` (batched scoring, best-of-K marks),
``config`` / ``train`` (training on the adapter trainer's loop), ``label_files`` (any labels file →
(index, label) pairs), ``score_file`` (`selfie score`).
"""

from .artifact import Reconstructor, load_reconstructor
from .reader import ReaderPrompt, read_states
from .scorer import Scorer, add_scores, mark_best
from .scores import SCORE_FIELDS, auc, baseline_stats, score

__all__ = ["SCORE_FIELDS", "ReaderPrompt", "Reconstructor", "Scorer", "add_scores", "auc", "baseline_stats",
           "load_reconstructor", "mark_best", "read_states", "score"]

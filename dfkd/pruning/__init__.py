"""Stage 2: prune the student. Each method is one class, built by Hydra from the ``_target_`` of
its conf/pruning/*.yaml:

    magnitude, random  Unstructured  single weights to zero (global, per-layer or LAMP L1, or random)
    iterative          Iterative     the same by magnitude, in rounds with recovery after each
    nm                 NM            N:M semi-structured (2:4 by default): what GPU sparse cores run
    structured         Structured    whole channels, with torch-pruning: a genuinely smaller network
                                     (in rounds with recovery after each: pruning.rounds)
"""

from dfkd.pruning.common import Pruner, dense_names, is_masked, make_permanent, prunable, run_order, sparsity
from dfkd.pruning.nm import NM
from dfkd.pruning.structured import Structured
from dfkd.pruning.unstructured import Iterative, Unstructured, lamp_scores, prune

__all__ = ["NM", "Iterative", "Pruner", "Structured", "Unstructured", "dense_names", "is_masked", "make_permanent",
           "prunable", "lamp_scores", "prune", "run_order", "sparsity"]

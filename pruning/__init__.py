"""pruneflow's pruning library: the layer-wise engine and the per-layer methods, in plain torch."""

from pruning.models.factored import load_compressed

__version__ = "0.1.0"
__all__ = ["__version__", "load_compressed"]

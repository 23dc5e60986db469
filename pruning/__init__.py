"""pruneflow's pruning library: the layer-wise engine and the per-layer methods, in plain torch."""

__version__ = "0.1.0"

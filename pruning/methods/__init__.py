"""The per-layer pruning methods: one module per method, each a pydantic config and a pure
`prune_layer(weight, statistics, config) -> LayerResult`, plus what they share (`base`, `sparsity`, `masks`,
`hessian`, `low_rank`, `structured`). `registry` lists the methods; the engine reaches them only through it."""

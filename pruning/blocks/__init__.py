"""What the engine (`pruning.engine`) does per decoder block: run a block on its own (`calls`), keep the activations
between blocks (`activations`), store finished blocks for reuse and resume (`store`), reuse finished sub-modules'
outputs (`finished_submodules`), and the optional dense-model steps: dense targets (`dense_targets`), block
reconstruction (`reconstruction`), non-uniform layer budgets (`budgets`)."""

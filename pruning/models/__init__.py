"""Models on disk and in memory: where they come from (`sources`, `assets`), where a family keeps its blocks
(`architectures`), reading and writing safetensors checkpoints (`checkpoint`, `access`), and what a pruned run
writes (`pruned_checkpoint`, `card`, `factored`, `shrink`)."""

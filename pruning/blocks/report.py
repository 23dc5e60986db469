"""What pruning reports, per linear, per block and over the whole model: the engine accumulates an `EngineReport`
block by block (from computed blocks and from blocks reused out of the store alike), and the run record keeps it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LayerReport(BaseModel):
    """One solved linear: its shape, the share of weights removed, its reconstruction error and solve time."""

    model_config = ConfigDict(extra="forbid")

    name: str  # the linear's full name, e.g. model.layers.3.mlp.down_proj
    block: int
    shape: tuple[int, int]
    sparsity: float
    reconstruction_error: float | None  # ‖(W − Ŵ)X‖² on the calibration inputs (None for data-free methods)
    relative_error: float | None  # the same over ‖WX‖²
    solve_seconds: float
    details: dict[str, float] = {}


class BlockRecord(BaseModel):
    """A finished block as the store keeps it (`block.json`): its layers, decoder-linear counts, forward time."""

    index: int
    layers: list[LayerReport]
    linear_parameters: int
    linear_removed: int
    removed_groups: dict[str, int] = {}  # structured methods: column groups removed per unit kind
    forward_seconds: float = 0.0
    reconstruction: dict[str, float] = {}  # with a block reconstruction: its losses and epochs


class EngineReport(BaseModel):
    """Per-layer reports, stage times and counts over all blocks (`add_block` once per block)."""

    model_config = ConfigDict(extra="forbid")

    layers: list[LayerReport] = []
    capture_seconds: float = 0.0
    forward_seconds: float = 0.0
    solve_seconds: float = 0.0
    io_seconds: float = 0.0
    blocks_computed: int = 0
    blocks_reused: int = 0
    linear_parameters: int = 0
    linear_removed: int = 0
    removed_groups: dict[str, list[int]] = {}
    block_sparsity: list[float] = Field(default=[], description="each block's target, with a layer budget")
    reconstruction: list[dict[str, float]] = Field(default=[], description="per block, with a block reconstruction")
    activations_in_memory: bool = True

    def add_block(self, record: BlockRecord, reused: bool) -> None:
        self.layers += record.layers
        if record.reconstruction:
            self.reconstruction.append({"block": float(record.index), **record.reconstruction})
        self.linear_parameters += record.linear_parameters
        self.linear_removed += record.linear_removed
        for kind, count in record.removed_groups.items():
            self.removed_groups.setdefault(kind, []).append(count)
        if reused:
            self.blocks_reused += 1
        else:
            self.blocks_computed += 1
            self.forward_seconds += record.forward_seconds
            self.solve_seconds += sum(layer.solve_seconds for layer in record.layers)

    @property
    def decoder_linear_sparsity(self) -> float:
        """Fraction of the decoder-block linears' parameters removed (embeddings and lm_head excluded)."""
        return self.linear_removed / max(self.linear_parameters, 1)

    @property
    def engine_seconds(self) -> float:
        """The engine's own work: forward passes plus solves (not fetching, writing or evaluating)."""
        return self.forward_seconds + self.solve_seconds

    def block_errors(self) -> list[float]:
        """Mean relative reconstruction error of each block's linears, in block order (empty for data-free
        methods, which measure no error)."""
        by_block: dict[int, list[float]] = {}
        for layer in self.layers:
            if layer.relative_error is not None:
                by_block.setdefault(layer.block, []).append(layer.relative_error)
        return [sum(errors) / len(errors) for _, errors in sorted(by_block.items())]

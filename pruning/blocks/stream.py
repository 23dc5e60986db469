"""One model's activations flowing from block to block: the pruned model's (each block's inputs are the previous
pruned block's outputs) or the dense model's (the original blocks', for dense targets and block reconstruction).

`inputs(i)` is block i's inputs: the previous block's outputs when this process just made them, else the latest
outputs the block store kept (or the embeddings), run forward through the finished blocks in between. That is how a
run resumes at any block after a kill, for both streams alike.
"""

from __future__ import annotations

from typing import Literal, Protocol, cast

from pruning.blocks.activations import ActivationSet
from pruning.blocks.memory import MemoryPlan
from pruning.blocks.store import BlockStore

StreamKind = Literal["pruned", "dense"]


class Replayer(Protocol):
    """What a stream needs of the engine to rebuild activations."""

    def capture(self) -> ActivationSet:
        """Block 0's inputs, from an embeddings-only pass (which also records every block's call arguments)."""
        ...

    def ensure_calls(self) -> None:
        """Make sure every block's call arguments are known (capturing them if this process has not)."""
        ...

    def replay(self, index: int, hidden: ActivationSet, stream: StreamKind) -> ActivationSet:
        """Finished block `index`'s outputs on `hidden`: its stored weights (pruned) or its original ones (dense)."""
        ...


class ActivationStream:
    """The inputs of each block in turn for one of the two streams (see the module docstring)."""

    def __init__(self, kind: StreamKind, store: BlockStore | None, plan: MemoryPlan, replayer: Replayer,
                 persist: bool = True) -> None:
        self.kind, self.store, self.plan, self.replayer = kind, store, plan, replayer
        self.persist = persist  # finished blocks' outputs kept in the store (resume points)
        self.latest: tuple[int, ActivationSet] | None = None  # the last block's outputs this process made

    def inputs(self, index: int) -> ActivationSet:
        if self.latest is not None and self.latest[0] == index - 1:
            return self.latest[1]
        start = next((previous for previous in range(index - 1, -1, -1) if self._stored(previous)), -1)
        if start < 0:
            hidden = self.replayer.capture()
        else:
            self.replayer.ensure_calls()
            assert self.store is not None
            hidden = ActivationSet.from_directory(self.store.stream_directory(start, self.kind),
                                                  self.plan.in_memory, self.plan.device)
        for replayed in range(start + 1, index):
            outputs = self.replayer.replay(replayed, hidden, self.kind)
            hidden.delete()
            hidden = outputs
        return hidden

    def outputs_for(self, index: int, keep: bool) -> ActivationSet:
        """An empty set for block `index`'s outputs: in the store when `keep` and the stream persists (what a
        resumed run starts from)."""
        stored = keep and self.persist and self.store is not None
        directory = cast(BlockStore, self.store).stream_directory(index, self.kind) if stored else None
        return self.plan.new_set(directory)

    def advance(self, index: int, inputs: ActivationSet, outputs: ActivationSet | None) -> None:
        """Block `index` is finished: its inputs are done with, its outputs (if any) are the next block's inputs."""
        inputs.delete()
        self.latest = (index, outputs) if outputs is not None else None

    def close(self) -> None:
        """Drop the held activations; the last finished block's outputs stay in the store, where a resumed run
        starts from them (a stop signal closes the engine too)."""
        if self.latest is not None:
            index, outputs = self.latest
            if self.store is None or outputs.directory != self.store.stream_directory(index, self.kind):
                outputs.delete()
        self.latest = None

    def _stored(self, index: int) -> bool:
        return self.store is not None and self.store.is_complete(index) and \
            self.store.stream_directory(index, self.kind).is_dir()

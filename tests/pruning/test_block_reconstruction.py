"""Block reconstruction: masks stay fixed, the held-out loss never ends above the one-shot block's, and the
pruned model ends closer to the dense one; the configs it cannot serve are refused before any work."""

import copy

import pytest
import torch
from pydantic import ValidationError
from tiny_models import random_ids, tiny_model

from pruning.blocks.reconstruction import ReconstructionConfig
from pruning.config import EngineConfig, PruneJob
from pruning.engine import prune_model
from pruning.methods.sparsegpt import SparseGPTConfig
from pruning.models.architectures import adapter_for

RECONSTRUCT = EngineConfig(forward_dtype="float32", batch_size=4,
                            reconstruction=ReconstructionConfig(epochs=5, learning_rate=1e-3))


def pruned_pair(family: str, **fields):
    dense = tiny_model(family)
    ids = random_ids(16, 32)
    one_shot, reconstructed = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_model(one_shot, ids, SparseGPTConfig(**fields), RECONSTRUCT.model_copy(update={"reconstruction": None}))
    report = prune_model(reconstructed, ids, SparseGPTConfig(**fields), RECONSTRUCT)
    return dense, one_shot, reconstructed, report


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
def test_reconstruction_keeps_every_mask_and_brings_the_model_closer_to_the_dense_one(family):
    dense, one_shot, reconstructed, report = pruned_pair(family, sparsity=0.6)
    adapter = adapter_for(dense)
    for index, (before, after) in enumerate(zip(adapter.blocks(one_shot), adapter.blocks(reconstructed),
                                                strict=True)):
        for name in adapter.linear_names:
            kept_before = adapter.read_weight(before.get_submodule(name)) != 0
            kept_after = adapter.read_weight(after.get_submodule(name)) != 0
            # Block 0 sees the same inputs in both runs, so the same mask; later blocks' masks follow their inputs.
            if index == 0:
                assert torch.equal(kept_after, kept_before), f"{name}'s mask changed"
            assert int(kept_after.sum()) == int(kept_before.sum()), f"{index}.{name} kept another count"
    held_out = random_ids(8, 32, seed=7)
    with torch.no_grad():
        reference = dense(input_ids=held_out).logits
        one_shot_error = float((one_shot(input_ids=held_out).logits - reference).square().mean())
        reconstructed_error = float((reconstructed(input_ids=held_out).logits - reference).square().mean())
    assert reconstructed_error < one_shot_error
    assert len(report.reconstruction) == len(adapter.blocks(dense))
    for entry in report.reconstruction:
        assert entry["holdout_loss_after"] <= entry["holdout_loss_before"]
        assert entry["epochs"] >= 1


def test_a_block_no_epoch_improves_is_left_as_the_method_made_it():
    """With a learning rate far too large every epoch overshoots; the one-shot weights are restored."""
    dense = tiny_model("llama")
    ids = random_ids(16, 32)
    one_shot, reconstructed = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_model(one_shot, ids, SparseGPTConfig(sparsity=0.5), RECONSTRUCT.model_copy(update={"reconstruction": None}))
    overshoot = ReconstructionConfig(epochs=3, learning_rate=10.0)
    report = prune_model(reconstructed, ids, SparseGPTConfig(sparsity=0.5),
                         RECONSTRUCT.model_copy(update={"reconstruction": overshoot}))
    assert report.reconstruction[0]["epochs"] == 1
    first = adapter_for(dense).blocks
    assert all(torch.equal(before, after) for before, after in zip(first(one_shot)[0].parameters(),
                                                                      first(reconstructed)[0].parameters(),
                                                                      strict=True))


@pytest.mark.parametrize(("method", "engine", "message"), [
    ({"method": "magnitude", "sparsity": 0.5}, {"targets": "dense"}, "magnitude is data-free"),
    ({"method": "oats", "sparsity": 0.5}, {"reconstruction": {}}, "oats keeps sparse \\+ low-rank factors"),
    ({"method": "sparsegpt", "sparsity": 0.5}, {"reconstruction": {"holdout": 1.5}}, "engine.reconstruction.holdout"),
    ({"method": "sparsegpt", "sparsity": 0.5}, {"reconstruction": {"epoch": 3}}, "engine.reconstruction.epoch"),
])
def test_engine_settings_a_method_cannot_use_are_refused_naming_the_field(method, engine, message, tmp_path):
    with pytest.raises(ValidationError, match=message):
        PruneJob.model_validate({"method": method, "engine": engine, "output_dir": str(tmp_path / "out"),
                                 "calibration": {"num_samples": 16, "seqlen": 32}})


def test_reconstruction_needs_a_held_out_batch():
    with pytest.raises(ValidationError, match="needs at least two calibration batches"):
        PruneJob.model_validate({"method": {"method": "sparsegpt", "sparsity": 0.5}, "output_dir": "/tmp/x",
                                 "engine": {"reconstruction": {}, "batch_size": 8},
                                 "calibration": {"num_samples": 8, "seqlen": 32}})

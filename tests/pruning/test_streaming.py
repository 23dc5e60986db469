"""The streamed engine: one block in memory, the same weights as the in-memory engine, spill, resume, checks."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as functional
from safetensors.torch import load_file, save_file
from tiny_models import random_ids, save_tiny_checkpoint, tiny_model
from transformers import AutoModelForCausalLM

from pruning.blocks.budgets import LayerBudget
from pruning.blocks.reconstruction import ReconstructionConfig
from pruning.blocks.store import BlockStore
from pruning.config import EngineConfig, PruneJob
from pruning.data.calibration import build_calibration_set
from pruning.data.corpora import load_corpus
from pruning.engine import PruneEngine, prune_model
from pruning.errors import ConfigError
from pruning.evaluation.perplexity import perplexity
from pruning.job import run_job
from pruning.methods.registry import is_structured, method_config
from pruning.models.access import StreamedModel
from pruning.models.architectures import adapter_for
from pruning.models.checkpoint import CheckpointReader
from pruning.models.shrink import shrink_model
from pruning.models.sources import load_model, load_tokenizer
from pruning.record import RUN_RECORD_FILE, PruneRecord

FP32 = EngineConfig(forward_dtype="float32", batch_size=4)
METHODS = [{"method": "magnitude", "sparsity": 0.5}, {"method": "wanda", "pattern": "2:4"},
           {"method": "sparsegpt", "sparsity": 0.5}, {"method": "oats", "sparsity": 0.5, "iterations": 5},
           {"method": "apt", "sparsity": 0.5}, {"method": "osscar", "sparsity": 0.5, "attention_groups": 1}]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("Pruning removes weights from a trained network, one layer at a time. " * 300)
    return path


def job(checkpoint, corpus, directory, method, **engine):
    return PruneJob.model_validate({
        "model": str(checkpoint), "method": method, "calibration": {"source": str(corpus), "num_samples": 8,
                                                                   "seqlen": 32},
        "evaluation": [], "output_dir": str(directory / "pruned"), "cache_dir": str(directory / "cache"),
        "artifacts_dir": str(directory / "artifacts"),
        "overwrite": True,  # a test's jobs share one output folder, each replacing the last
        "engine": {"device": "cpu", "forward_dtype": "float32", "batch_size": 4, **engine}})


def calibration_for(checkpoint, corpus, tmp_path):
    """The windows a job of `job(...)` samples: 8 of 32 tokens, seed 0."""
    return build_calibration_set(load_corpus(str(corpus), "calibration", tmp_path), load_tokenizer(checkpoint), 8,
                                 32, 0)


def stored(directory):
    reader = CheckpointReader(directory)
    return {name: reader.read(name) for name in reader.names}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("fields", METHODS, ids=lambda fields: fields["method"])
def test_streamed_prune_writes_exactly_the_weights_of_the_in_memory_engine(family, fields, tmp_path, corpus,
                                                                           tiny_tokenizer_dir):
    if family == "gpt2" and fields.get("attention_groups"):
        fields = {**fields, "attention_groups": 0}  # GPT-2 configs cannot describe fewer heads
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir, family)
    calibration = calibration_for(checkpoint, corpus, tmp_path)
    record = run_job(job(checkpoint, corpus, tmp_path, fields))

    model = load_model(checkpoint)
    method = method_config(fields)
    prune_model(model, calibration.input_ids, method, FP32)
    if is_structured(method.method):
        shrink_model(model, adapter_for(model))
    expected = {name: tensor for name, tensor in model.state_dict().items()}
    written = stored(tmp_path / "pruned")
    assert written.keys() <= expected.keys()
    for name, tensor in written.items():
        assert tensor.equal(expected[name]), name
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "pruned") is not None
    assert record.engine.blocks_computed == 2
    assert [layer.block for layer in record.engine.layers] == sorted(layer.block for layer in record.engine.layers)
    assert {layer.block for layer in record.engine.layers} == {0, 1}
    assert (tmp_path / "pruned" / "model.safetensors.index.json").is_file()


def test_an_owl_budget_on_a_streamed_checkpoint_writes_the_in_memory_engines_weights(tmp_path, corpus,
                                                                                     tiny_tokenizer_dir):
    """OWL's dense pass loads and releases every block of a streamed model before block 0 is pruned."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    calibration = calibration_for(checkpoint, corpus, tmp_path)
    fields = {"method": "sparsegpt", "sparsity": 0.5}
    record = run_job(job(checkpoint, corpus, tmp_path, fields, budget={"kind": "owl"}))
    assert len(record.engine.block_sparsity) == 2 and sum(record.engine.block_sparsity) / 2 == pytest.approx(0.5)

    model = load_model(checkpoint)
    prune_model(model, calibration.input_ids, method_config(fields), FP32.model_copy(update={"budget": LayerBudget()}))
    expected = model.state_dict()
    for name, tensor in stored(tmp_path / "pruned").items():
        assert tensor.equal(expected[name]), name


def test_data_free_methods_run_no_calibration_forward(tmp_path, corpus, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    for fields in ({"method": "magnitude", "sparsity": 0.5}, {"method": "structured-magnitude", "sparsity": 0.5}):
        record = run_job(job(checkpoint, corpus, tmp_path, fields))
        assert record.engine.capture_seconds == 0 and record.engine.forward_seconds == 0, fields
        assert record.inputs.calibration is None and record.engine.block_errors() == []
        assert all(layer.reconstruction_error is None for layer in record.engine.layers)


def test_the_run_record_reads_back_typed_and_an_older_one_is_refused_with_the_fix(tmp_path, corpus,
                                                                                  tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    record = run_job(job(checkpoint, corpus, tmp_path, {"method": "wanda", "sparsity": 0.5}))
    output = tmp_path / "pruned"
    assert PruneRecord.read(output) == record and PruneRecord.read_if_present(tmp_path / "tiny") is None
    assert len(record.engine.block_errors()) == 2
    stale = json.loads((output / RUN_RECORD_FILE).read_text())
    for layer in stale["engine"]["layers"]:
        del layer["block"]  # as pruneflow wrote it before layers knew their block
    (output / RUN_RECORD_FILE).write_text(json.dumps(stale))
    with pytest.raises(ConfigError, match=r"pruneflow.json: not a run record of this pruneflow .*engine.layers.0.block"
                                          r".*prune that model again"):
        PruneRecord.read(output)


def test_activations_past_the_memory_budget_go_to_disk_with_identical_results(tmp_path, corpus, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    method = {"method": "sparsegpt", "sparsity": 0.5}
    in_memory = run_job(job(checkpoint, corpus, tmp_path / "memory", method))
    on_disk = run_job(job(checkpoint, corpus, tmp_path / "disk", method, memory_budget="1KB"))
    assert in_memory.engine.activations_in_memory and not on_disk.engine.activations_in_memory
    first, second = stored(tmp_path / "memory" / "pruned"), stored(tmp_path / "disk" / "pruned")
    assert all(second[name].equal(tensor) for name, tensor in first.items())


DENSE_STREAM = EngineConfig(forward_dtype="float32", batch_size=4, targets="dense",
                             reconstruction=ReconstructionConfig(epochs=2, holdout=0.5))


@pytest.mark.parametrize("options", [FP32, DENSE_STREAM], ids=["pruned-targets", "dense-stream"])
@pytest.mark.parametrize("outputs_kept", [True, False])
def test_a_new_engine_resumes_from_the_store_with_identical_weights(outputs_kept, options, tmp_path, corpus,
                                                                    tiny_tokenizer_dir):
    """With the last finished block's outputs in the store it continues from them; without them it re-runs the
    finished blocks from the embeddings (the dense stream: the original blocks)."""
    import tiny_models
    from transformers import LlamaConfig

    tiny_models.FAMILY_CONFIGS["llama-4"] = LlamaConfig(**{**tiny_models._COMMON, "num_hidden_layers": 4})
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir, "llama-4")
    ids = calibration_for(checkpoint, corpus, tmp_path).input_ids
    method = method_config({"method": "sparsegpt", "sparsity": 0.5})

    def engine(root):
        return PruneEngine(StreamedModel(checkpoint), method, options, inputs=ids, store=BlockStore(root / "run"))

    def kept(store, index, stream):
        return store.stream_directory(index, stream).is_dir()

    with engine(tmp_path / "complete") as complete:
        complete.run()
    with engine(tmp_path / "interrupted") as interrupted:  # as if killed after block 1
        interrupted.prune_block(0)
        interrupted.prune_block(1)
    assert kept(interrupted.store, 1, "pruned")
    assert kept(interrupted.store, 1, "dense") == options.dense_stream
    if not outputs_kept:
        for stream in ("pruned", "dense"):
            shutil.rmtree(interrupted.store.stream_directory(1, stream), ignore_errors=True)
    with engine(tmp_path / "interrupted") as resumed:
        report = resumed.run()
    assert (report.blocks_reused, report.blocks_computed) == (2, 2)
    for index in range(4):
        expected = load_file(str(complete.store.weights_path(index)))
        resumed_weights = load_file(str(resumed.store.weights_path(index)))
        assert resumed_weights.keys() == expected.keys()
        assert all(tensor.equal(expected[name]) for name, tensor in resumed_weights.items())
    assert not any(kept(resumed.store, index, stream) for index in range(4) for stream in ("pruned", "dense")), \
        "a finished run keeps no activations"
    if options.dense_stream:
        assert [int(entry["block"]) for entry in report.reconstruction] == [0, 1, 2, 3], "reused blocks report too"


def test_without_persisted_activations_no_block_outputs_reach_the_store_and_weights_are_unchanged(
        tmp_path, corpus, tiny_tokenizer_dir):
    """`persist_activations: false` (no resume wanted): no finished block's outputs are written to the store, the
    weights equal a persisting run's, and a resumed run still finishes by replaying from the embeddings."""
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir, "llama")
    ids = calibration_for(checkpoint, corpus, tmp_path).input_ids
    method = method_config({"method": "sparsegpt", "sparsity": 0.5})
    transient = FP32.model_copy(update={"persist_activations": False})

    def engine(root, options):
        return PruneEngine(StreamedModel(checkpoint), method, options, inputs=ids, store=BlockStore(root / "run"))

    with engine(tmp_path / "kept", FP32) as kept:
        kept.run()
    with engine(tmp_path / "transient", transient) as interrupted:
        interrupted.prune_block(0)
        assert not interrupted.store.stream_directory(0, "pruned").exists()
    assert transient.result_fields() == FP32.result_fields(), "where activations live changes no result"
    with engine(tmp_path / "transient", transient) as resumed:
        report = resumed.run()
    assert (report.blocks_reused, report.blocks_computed) == (1, resumed.num_blocks - 1)
    for index in range(resumed.num_blocks):
        assert not resumed.store.stream_directory(index, "pruned").exists()
        expected, actual = (load_file(str(engine.store.weights_path(index))) for engine in (kept, resumed))
        assert all(tensor.equal(expected[name]) for name, tensor in actual.items())


def test_a_bfloat16_checkpoint_stays_bfloat16_on_disk(tmp_path, corpus, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    load_tokenizer(checkpoint).save_pretrained(tmp_path / "bf16")
    run_job(job(tmp_path / "bf16", corpus, tmp_path, {"method": "sparsegpt", "sparsity": 0.5}))
    reader = CheckpointReader(tmp_path / "pruned")
    assert reader.storage_dtype() == torch.bfloat16
    weight = reader.read("model.layers.0.mlp.up_proj.weight")
    assert weight.dtype == torch.bfloat16 and float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_a_checkpoint_with_missing_tensors_is_refused_naming_them(tmp_path, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir)
    weights = checkpoint / "model.safetensors"
    save_file({"model.embed_tokens.weight": load_file(str(weights))["model.embed_tokens.weight"]}, str(weights))
    with pytest.raises(ValueError, match=r"missing tensors model\.layers\.0\.") as raised:
        StreamedModel(checkpoint)
    assert "config.json" in str(raised.value)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "opt", "gpt2", "phi3"])
def test_block_by_block_perplexity_equals_the_full_model_forward(family, tmp_path, tiny_tokenizer_dir):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny", tiny_tokenizer_dir, family)
    tokens = random_ids(1, 700).flatten()
    streamed = perplexity(StreamedModel(checkpoint), tokens, 64, "random", max_windows=10, batch_size=4)
    model = tiny_model(family)
    windows = tokens[:640].view(10, 64)
    total = 0.0
    with torch.no_grad():
        for batch in windows.split(4):
            logits = model(input_ids=batch).logits[:, :-1]
            total += float(functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                    reduction="sum"))
    assert streamed.perplexity == pytest.approx(math.exp(total / (10 * 63)), rel=1e-6)
    assert json.loads(streamed.model_dump_json())["windows"] == 10

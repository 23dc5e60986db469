"""Vision models through the one job path, as a user runs it: `pruneflow prune` and the Prefect `compress` flow on a
ViT, DeiT or DINOv2 folder saved by `save_pretrained` (the hub's tensor names) with its image processor, calibrated
and evaluated on image folders; the result is a plain folder that `from_pretrained` loads, with accuracy in its
record and card."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import VISION_MODELS, tiny_vision_model
from transformers import ViTImageProcessor

from flows.cli import main
from pruning.models.architectures import adapter_for


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """Calibration and evaluation folders of 3 classes (random RGB pictures of 40x40: the processor resizes)."""
    root = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    for split, count in (("calibration", 24), ("evaluation", 12)):
        for index in range(count):
            folder = root / split / f"class{index % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(generator.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root / "calibration", root / "evaluation"


def saved_model(kind, directory):
    model = tiny_vision_model(kind)
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def job(model, folders, tmp_path, method, *options):
    return ["--model", str(model), "--method", method, "--sparsity", "0.5", *options, "--calibration",
            str(folders[0]), "--num-samples", "16", "--eval", str(folders[1]), "--eval-dense", "--device", "cpu",
            "--output", str(tmp_path / "pruned"), "--cache-dir", str(tmp_path / "cache"), "--artifacts",
            str(tmp_path / "artifacts")]


def test_prune_a_vit_folder_into_a_loadable_sparse_model_with_its_accuracy(tmp_path, image_folders):
    model = saved_model("vit", tmp_path / "vit")
    assert main(["prune", *job(model, image_folders, tmp_path, "sparsegpt")]) == 0
    pruned = tmp_path / "pruned"
    model_class = VISION_MODELS["vit"][0]
    loaded, info = model_class.from_pretrained(pruned, output_loading_info=True)
    assert not any(info.values()), info
    adapter = adapter_for(loaded)
    for block in adapter.blocks(loaded):
        for name in adapter.linear_names:
            weight = adapter.read_weight(block.get_submodule(name))
            assert int((weight == 0).sum()) == weight.numel() // 2, name
    record = json.loads((pruned / "pruneflow.json").read_text())
    assert record["perplexity"] == [] and len(record["accuracy"]) == 1 and len(record["dense_accuracy"]) == 1
    accuracy = record["accuracy"][0]
    assert accuracy["protocol"] == f"top1[{image_folders[1]}|images=12]" and accuracy["top5"] is not None
    assert record["inputs"]["calibration"]["images"] == 16
    assert record["inputs"]["calibration"]["shape"] == [16, 3, 32, 32]
    assert (pruned / "preprocessor_config.json").is_file()
    card = (pruned / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "| top-1 | top-5 | dense top-1 | protocol |" in card
    # The accuracy in the record is the model's: recomputed from the folder as a user loads it.
    from pruning.data.images import load_image_set, pixel_values
    from pruning.evaluation.accuracy import image_accuracy

    images = load_image_set(image_folders[1], "evaluation")
    pixels = pixel_values(images, torch.arange(images.count), ViTImageProcessor.from_pretrained(pruned),
                          loaded.config, True, "evaluation")
    assert image_accuracy(loaded.eval(), pixels, images.labels, str(image_folders[1])).top1 == accuracy["top1"]


def test_compress_reuses_the_blocks_of_prune_for_a_vision_model(tmp_path, image_folders):
    model = saved_model("dinov2-backbone", tmp_path / "dinov2")
    assert main(["prune", *job(model, image_folders, tmp_path, "wanda")]) == 0
    by_prune = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert by_prune["accuracy"][0]["protocol"].startswith("knn20-loo[")
    assert main(["compress", *job(model, image_folders, tmp_path, "wanda"), "--overwrite"]) == 0
    by_compress = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    assert by_compress["engine"]["blocks_reused"] == 2 and by_compress["accuracy"] == by_prune["accuracy"]


def test_osscar_makes_a_smaller_deit_that_loads_with_from_pretrained(tmp_path, image_folders):
    model = saved_model("deit-distilled", tmp_path / "deit")
    assert main(["prune", *job(model, image_folders, tmp_path, "osscar", "--option", "attention_groups=1")]) == 0
    record = json.loads((tmp_path / "pruned" / "pruneflow.json").read_text())
    loaded = VISION_MODELS["deit-distilled"][0].from_pretrained(tmp_path / "pruned")
    assert sum(parameter.numel() for parameter in loaded.parameters()) == record["structured"]["parameters_after"]
    assert record["structured"]["removed_groups_per_block"] == {"attention": 1, "mlp": 64}
    assert loaded.config.num_attention_heads == 3 and loaded.config.intermediate_size == 64


def test_a_sweep_of_a_vision_model_reports_and_tracks_accuracy(tmp_path, image_folders, monkeypatch):
    import mlflow
    import yaml

    model = saved_model("vit", tmp_path / "vit")
    monkeypatch.chdir(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    params = {
        "models": [{"name": "tiny-vit", "source": str(model)}],
        "prune": {"methods": ["magnitude", "sparsegpt", "osscar"], "sparsity": 0.5},
        "calibration": {"source": str(image_folders[0]), "num_samples": 16},
        "evaluation": [{"dataset": str(image_folders[1])}],
        "engine": {"device": "cpu"},
        "paths": {"runs": str(tmp_path / "runs"), "cache": str(tmp_path / "cache"),
                  "artifacts": str(tmp_path / "artifacts")},
        "tracking": {"experiment": "vision"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["sweep", "--params", "params.yaml"]) == 0

    report = tmp_path / "runs" / "report"
    protocol = f"top1[{image_folders[1]}|images=12]"
    table = (report / "results.md").read_text()
    header = table.splitlines()[0]
    assert f"top-1 {protocol.replace('|', chr(92) + '|')}" in header and "ppl " not in header
    assert len([line for line in table.splitlines() if line.startswith("| tiny-vit |")]) == 4  # dense + 3
    assert (report / "accuracy_vs_sparsity.png").stat().st_size > 0
    assert not (tmp_path / "runs" / "speed").exists()  # the speed bench times language models only
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(experiment_names=["vision"], output_format="list")
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 4
    assert all(any(key.startswith("top1.") for key in run.data.metrics) for run in children)

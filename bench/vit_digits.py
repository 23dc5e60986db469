"""Benchmark: a small ViT trained from scratch offline, then pruned by every method (issue "Vision transformers").

No pretrained vision weights reach this machine, so the proof is a model we train: scikit-learn's bundled 8x8 digits
(1,797 images, 10 classes; Alpaydin & Kaynak, UCI) upscaled to 32x32 RGB, a stratified 70/30 train/test split, a
ViTForImageClassification (4 blocks, hidden 96, 4 heads, MLP 384, patches of 4 pixels) trained with AdamW. The
images go through pruneflow's own image path: .npz files read by `pruning.data.images`, the model's saved
ViTImageProcessor. Each method then prunes a fresh copy of the trained model, calibrated on 128 training images
(seeds 0-2), and top-1 accuracy on the 540 test images is measured (`pruning.evaluation.accuracy`): unstructured
at 30/50/70/80/90% and 2:4, OSSCAR and structured Wanda removing 50% of the MLP neurons and 1 of 4 heads per block.
Prune time is also given as a ratio to one dense forward pass over the calibration images in the same run.

  .venv/bin/python bench/vit_digits.py     -> bench/results/vit_digits.json, bench/results/vit_digits.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt", "admm", "apt", "oats")
SETTINGS: tuple[dict[str, Any], ...] = (*({"sparsity": share} for share in (0.3, 0.5, 0.7, 0.8, 0.9)),
                                        {"pattern": "2:4"})
STRUCTURED = ({"method": "osscar", "sparsity": 0.5, "attention_groups": 1},
              {"method": "structured-wanda", "sparsity": 0.5, "attention_groups": 1})
SEEDS = (0, 1, 2)
CALIBRATION_IMAGES = 128


def digit_images(work: Path) -> tuple[Path, Path]:
    """The digits as 32x32 RGB uint8 images in train.npz / test.npz (stratified 70/30, seed 0)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = (digits.images * (255 / 16)).round().astype(np.uint8)
    large = np.stack([np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB"))
                      for image in small])
    train_x, test_x, train_y, test_y = train_test_split(large, digits.target, test_size=0.3, random_state=0,
                                                        stratify=digits.target)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(work / "train.npz", images=train_x, labels=train_y)
    np.savez(work / "test.npz", images=test_x, labels=test_y)
    return work / "train.npz", work / "test.npz"


def load_split(path: Path, model_dir: Path, indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, labels) of a split, through pruneflow's image path and the model's own processor."""
    from transformers import AutoConfig, AutoImageProcessor

    from pruning.data.images import load_image_set, pixel_values

    images = load_image_set(path, "bench.images")
    chosen = indices if indices is not None else torch.arange(images.count)
    pixels = pixel_values(images, chosen, AutoImageProcessor.from_pretrained(model_dir),
                          AutoConfig.from_pretrained(model_dir), True, "bench.images")
    return pixels, images.labels[chosen]


def train(model_dir: Path, train_npz: Path, epochs: int, seed: int) -> dict[str, Any]:
    """Train the ViT from scratch and save it (with its processor) to `model_dir`."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                       image_size=32, patch_size=4, num_labels=10, hidden_dropout_prob=0.1)
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(model_dir)
    model.config.save_pretrained(model_dir)
    pixels, labels = load_split(train_npz, model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * -(-len(labels) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(64):
            # Augmentation: shifts of up to 2 pixels (digits keep their class when moved a little).
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            inputs = torch.roll(pixels[batch], shifts=shift, dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(pixel_values=inputs).logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    model.save_pretrained(model_dir)
    return {"epochs": epochs, "train_images": len(labels), "train_seconds": time.perf_counter() - started,
            "final_batch_loss": float(loss), "parameters": sum(p.numel() for p in model.parameters())}


def dense_forward_seconds(model_dir: Path, pixels: torch.Tensor) -> float:
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        model(pixel_values=pixels[:8])
        started = time.perf_counter()
        for batch in pixels.split(8):  # the engine's batch size
            model(pixel_values=batch)
    return time.perf_counter() - started


def run_case(case: dict[str, Any], seed: int, model_dir: Path, train_npz: Path,
             test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    from transformers import ViTForImageClassification

    from pruning.config import EngineConfig
    from pruning.data.images import sample_indices
    from pruning.engine import prune_model
    from pruning.evaluation.accuracy import image_accuracy
    from pruning.methods.registry import method_config
    from pruning.models.shrink import shrink_record

    model = ViTForImageClassification.from_pretrained(model_dir).eval()
    indices = sample_indices(int(np.load(train_npz)["labels"].shape[0]), CALIBRATION_IMAGES, seed, "bench")
    calibration, _ = load_split(train_npz, model_dir, indices)
    started = time.perf_counter()
    report = prune_model(model, calibration, method_config(case), EngineConfig(forward_dtype="float32"))
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"seed": seed, "prune_seconds": seconds,
                              "sparsity": sum(layer.sparsity * layer.shape[0] * layer.shape[1]
                                              for layer in report.layers) /
                              sum(layer.shape[0] * layer.shape[1] for layer in report.layers)}
    if case["method"] in ("osscar", "structured-wanda"):
        result["shrink"] = shrink_record(model)
    accuracy = image_accuracy(model, *test, "digits-test")
    return {**result, "top1": accuracy.top1, "top5": accuracy.top5, "protocol": accuracy.protocol}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for method in UNSTRUCTURED:
        points = [(entry["case"]["sparsity"], entry["mean_top1"]) for entry in result["cases"]
                  if entry["case"]["method"] == method and "sparsity" in entry["case"]]
        line = axis.plot(*zip(*sorted(points), strict=True), marker="o", label=method)[0]
        two_four = [entry["mean_top1"] for entry in result["cases"]
                    if entry["case"]["method"] == method and entry["case"].get("pattern") == "2:4"]
        if two_four:
            axis.scatter([0.5], two_four, marker="x", s=60, color=line.get_color())
    axis.axhline(result["dense"]["top1"], color="black", linestyle="--", label="dense")
    axis.set_xlabel("sparsity of the encoder linears (x: 2:4)")
    axis.set_ylabel("top-1 accuracy, digits test split (mean of 3 calibration seeds)")
    axis.set_title("ViT trained from scratch on digits, pruned one-shot")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / ".pruneflow" / "bench-vit")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "vit_digits.json")
    arguments = parser.parse_args()
    from transformers import ViTForImageClassification

    from pruning.evaluation.accuracy import image_accuracy
    from pruning.io import write_json
    from pruning.machine import Machine

    train_npz, test_npz = digit_images(arguments.work)
    model_dir = arguments.work / "vit-digits"
    training = train(model_dir, train_npz, arguments.epochs, seed=0)
    test = load_split(test_npz, model_dir)
    dense = image_accuracy(ViTForImageClassification.from_pretrained(model_dir).eval(), *test, "digits-test")
    calibration, _ = load_split(train_npz, model_dir, torch.arange(CALIBRATION_IMAGES))
    forward = dense_forward_seconds(model_dir, calibration)
    print(f"dense top-1 {dense.top1:.4f} after {training['train_seconds']:.0f} s of training", flush=True)
    cases = [{"method": method, **setting} for setting in SETTINGS for method in UNSTRUCTURED
             if not (method == "oats" and "pattern" in setting)] + list(STRUCTURED)
    result: dict[str, Any] = {"protocol": dense.protocol, "training": training, "calibration_images":
                              CALIBRATION_IMAGES, "dense": dense.model_dump(), "dense_forward_seconds": forward,
                              "machine": Machine.resolve("cpu", "float32").result_fields(),
                              "threads": torch.get_num_threads(), "cases": []}
    for case in cases:
        runs = [run_case(case, seed, model_dir, train_npz, test) for seed in (SEEDS if case["method"] != "magnitude"
                                                                              else (0,))]
        top1 = [run["top1"] for run in runs]
        entry = {"case": case, "runs": runs, "mean_top1": sum(top1) / len(top1), "spread": max(top1) - min(top1),
                 "prune_ratio": sum(run["prune_seconds"] for run in runs) / len(runs) / forward}
        result["cases"].append(entry)
        print(json.dumps({"case": case, "mean_top1": round(entry["mean_top1"], 4),
                          "spread": round(entry["spread"], 4)}), flush=True)
        write_json(arguments.output, result)
    plot(result, arguments.output.with_suffix(".png"))
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()

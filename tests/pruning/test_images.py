"""Image sets (class folders, save_to_disk folders, .npz) and the accuracy metrics of vision models."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import VISION_MODELS, random_pixels, tiny_vision_model
from transformers import ViTImageProcessor

from pruning.data.images import image_manifest, load_image_set, pixel_values, sample_indices
from pruning.errors import ConfigError
from pruning.evaluation.accuracy import classification_accuracy, image_accuracy, knn_accuracy

CONFIG = VISION_MODELS["vit"][1]
PROCESSOR = ViTImageProcessor(size={"height": 32, "width": 32})


def write_class_folders(root, per_class=3, size=20, mode="RGB"):
    for label, colour in (("cat", 40), ("dog", 200)):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            Image.new(mode, (size, size), colour + index if mode == "L" else (colour, index, 0)).save(
                root / label / f"{index}.png")
    return root


def test_class_subfolders_give_sorted_labels_and_processed_pixels(tmp_path):
    images = load_image_set(write_class_folders(tmp_path / "images"), "calibration.source")
    assert images.count == 6 and images.class_names == ("cat", "dog") and images.labels.tolist() == [0] * 3 + [1] * 3
    indices = sample_indices(images.count, 4, seed=0, field="calibration.num_samples")
    pixels = pixel_values(images, indices, PROCESSOR, CONFIG, True, "calibration.source")
    assert pixels.shape == (4, 3, 32, 32) and pixels.dtype == torch.float32
    manifest = image_manifest(images, indices, 0, PROCESSOR, pixels)
    assert manifest.images == 4 and manifest.source_images == 6 and manifest.processor.startswith("ViTImageProcessor")
    other = image_manifest(images, indices, 0, ViTImageProcessor(size={"height": 32, "width": 32}, image_std=0.3),
                           pixels)
    assert other.processor_sha256 != manifest.processor_sha256
    assert load_image_set(tmp_path / "images", "x").sha256 == images.sha256


def test_npz_arrays_and_a_saved_dataset_load_with_their_labels(tmp_path):
    arrays = np.random.default_rng(0).integers(0, 255, (5, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=arrays, labels=np.array([0, 1, 2, 1, 0]))
    npz = load_image_set(tmp_path / "set.npz", "evaluation.dataset")
    assert npz.count == 5 and npz.labels.tolist() == [0, 1, 2, 1, 0]
    assert np.array_equal(np.asarray(npz.image(3)), arrays[3])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    saved = datasets.Dataset.from_dict({"image": [Image.fromarray(array) for array in arrays[:2]], "label": [1, 0]},
                                       features=features)
    saved.save_to_disk(str(tmp_path / "saved"))
    loaded = load_image_set(tmp_path / "saved", "evaluation.dataset")
    assert loaded.count == 2 and loaded.labels.tolist() == [1, 0] and loaded.class_names == ("a", "b")


def test_grayscale_images_for_an_rgb_model_are_refused_naming_the_field_and_the_fix(tmp_path):
    images = load_image_set(write_class_folders(tmp_path / "gray", mode="L"), "calibration.source")
    with pytest.raises(ConfigError, match=r"^calibration.source: image 0 .* 1 channel.*takes 3.*convert\('RGB'\)"):
        pixel_values(images, torch.arange(2), PROCESSOR, CONFIG, True, "calibration.source")


def test_a_processor_size_the_model_cannot_take_is_refused(tmp_path):
    images = load_image_set(write_class_folders(tmp_path / "images"), "calibration.source")
    with pytest.raises(ConfigError, match="^calibration.source: the image processor gives 48x48 .* takes 32x32"):
        pixel_values(images, torch.arange(2), ViTImageProcessor(size={"height": 48, "width": 48}), CONFIG, True,
                     "calibration.source")


@pytest.mark.parametrize("make, message", [
    (lambda root: root.mkdir(), "holds no images"),
    (lambda root: np.savez(root.with_suffix(".npz"), pixels=np.zeros((2, 4, 4))), "'images' array"),
    (lambda root: np.savez(root.with_suffix(".npz"), images=np.zeros((2, 4, 4, 2))), r"shape \(2, 4, 4, 2\)"),
    (lambda root: np.savez(root.with_suffix(".npz"), images=np.zeros((2, 4, 4)), labels=np.zeros(3)), "3 labels"),
])
def test_bad_image_sources_are_refused_naming_the_field(tmp_path, make, message):
    root = tmp_path / "source"
    make(root)
    source = root if root.exists() else root.with_suffix(".npz")
    with pytest.raises(ConfigError, match=f"^evaluation.dataset: .*{message}"):
        load_image_set(source, "evaluation.dataset")


def test_more_calibration_images_than_the_source_holds_are_refused():
    with pytest.raises(ConfigError, match="^calibration.num_samples: num_samples 9 is more than the 6 images"):
        sample_indices(6, 9, 0, "calibration.num_samples")


def test_top1_and_top5_count_the_right_rows():
    logits = torch.eye(6)[[0, 1, 2, 3]] + torch.arange(6) * 0.01  # rows predict 0, 1, 2, 3
    top1, top5 = classification_accuracy(logits, torch.tensor([0, 1, 5, 4]))
    assert top1 == 0.5 and top5 == 1.0  # labels 5 and 4 rank second: inside the top 5
    assert classification_accuracy(logits[:, :4], torch.tensor([0, 1, 2, 0]))[1] is None


def test_knn_finds_separated_classes_and_not_random_labels():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 5
    labels = torch.arange(4).repeat_interleave(30)
    features = centres[labels] + torch.randn(120, 16, generator=generator)
    assert knn_accuracy(features, labels, chunk=50) == 1.0
    assert knn_accuracy(torch.randn(120, 16, generator=generator), labels) < 0.5


@pytest.mark.parametrize("kind, protocol", [("vit", "top1[digits|images=12]"),
                                            ("dinov2-backbone", "knn20-loo[digits|images=12|class-token")])
def test_classifiers_get_top1_and_backbones_the_knn_probe(kind, protocol):
    result = image_accuracy(tiny_vision_model(kind), random_pixels(12), torch.arange(12) % 10, "digits", 5)
    assert result.protocol.startswith(protocol) and 0.0 <= result.top1 <= 1.0 and result.images == 12
    assert (result.top5 is not None) == (kind == "vit")

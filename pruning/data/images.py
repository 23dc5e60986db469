"""Image sets for calibrating and evaluating vision models, preprocessed by the model's own image processor.

Local sources:
  a folder of class subfolders   class_a/*.png, class_b/*.jpg, ... (labels: the subfolders in sorted order);
                                 a folder of images without subfolders has no labels (calibration only)
  a `datasets.save_to_disk` folder with an Image column (labels: its ClassLabel column, or `label`/`labels`)
  a `.npz` file                  `images` (N, H, W) or (N, H, W, C) uint8 (0..255) or float (0..1), `labels` (N,)
Images are read one at a time, so an evaluation set need not fit in memory as pictures; the sampled calibration
images become one (N, C, H, W) float tensor.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from pruning.errors import ConfigError
from pruning.io import sha256_file, sha256_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LABEL_COLUMNS = ("label", "labels")
CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3, "RGBA": 4, "CMYK": 4, "I": 1, "F": 1, "I;16": 1}


@dataclass
class ImageSet:
    """`count` images read by `image(i)`, with their class labels (None when the source has none); `sha256`, the
    content's digest, is computed when first asked for (a preflight that reads one image does not hash them all)."""

    source: str
    count: int
    read: Callable[[int], Image.Image]
    labels: torch.Tensor | None
    class_names: tuple[str, ...]
    digest: Callable[[], str]

    def image(self, index: int) -> Image.Image:
        return self.read(index)

    @functools.cached_property
    def sha256(self) -> str:
        return self.digest()


class ImageManifest(BaseModel):
    """What identifies a calibration or evaluation image set: the source's digest, the chosen images, the
    processor's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    sha256: str
    images: int
    source_images: int
    seed: int | None
    indices_sha256: str
    processor: str
    processor_sha256: str  # of the processor's settings (size, crop, mean, std, ...)
    shape: tuple[int, ...]


def load_image_set(source: str | Path, field: str) -> ImageSet:
    """The images of a local source (see the module docstring); a missing, empty or unreadable source is refused
    naming `field`."""
    path = Path(source).expanduser()
    if path.suffix == ".npz" and path.is_file():
        return _npz_images(path, field)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        return _saved_dataset_images(path, field)
    if path.is_dir():
        return _folder_images(path, field)
    raise ConfigError(f"{field}: '{source}' is not an image folder, a datasets.save_to_disk folder or a .npz file; "
                      "give one of those")


def looks_like_images(source: str) -> bool:
    """Whether a source is an image source by its form alone (cheap: no image is decoded): a .npz path, a saved
    dataset with an Image feature, a folder with images in it or in its subfolders."""
    path = Path(source).expanduser()
    if path.suffix == ".npz":
        return True
    if not path.is_dir():
        return False
    info = path / "dataset_info.json"
    if info.is_file():
        return '"_type": "Image"' in info.read_text(errors="replace")
    children = [child for child in path.iterdir() if not child.name.startswith(".")]
    return any(child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES for child in children) or \
        any(child.is_dir() and _images_in(child) for child in children)


def check_image_source(source: str, field: str) -> None:
    """A vision model's calibration or evaluation source has the form of an image source."""
    if not looks_like_images(source):
        raise ConfigError(f"{field}: '{source}' is not an image source, and the model takes images; give a folder "
                          "of images (class subfolders for labels), a datasets.save_to_disk folder with an Image "
                          "column, or a .npz with an 'images' array")
    if Path(source).expanduser().suffix == ".npz" and not Path(source).expanduser().is_file():
        raise ConfigError(f"{field}: '{source}' does not exist; give the path of a .npz file")


def _folder_images(folder: Path, field: str) -> ImageSet:
    classes = sorted(child for child in folder.iterdir() if child.is_dir() and not child.name.startswith("."))
    groups = [(index, _images_in(child)) for index, child in enumerate(classes)] if classes else \
        [(-1, _images_in(folder))]
    files = [file for _, members in groups for file in members]
    if not files:
        raise ConfigError(f"{field}: '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}), in it or in class "
                          "subfolders; point it at a folder of images")
    labels = torch.tensor([index for index, members in groups for _ in members]) if classes else None
    return ImageSet(str(folder), len(files), lambda index: _open(files[index], field), labels,
                    tuple(child.name for child in classes),
                    lambda: sha256_text(",".join(f"{file.relative_to(folder)}:{sha256_file(file)}" for file in files)))


def _images_in(folder: Path) -> list[Path]:
    return sorted(file for file in folder.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file())


def _open(file: Path, field: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            image.load()
            return image
    except OSError as error:
        raise ConfigError(f"{field}: '{file}' is not a readable image ({error}); remove or replace it") from None


def _npz_images(file: Path, field: str) -> ImageSet:
    try:
        arrays = np.load(file, allow_pickle=False)
        images = arrays["images"]
        labels = torch.from_numpy(arrays["labels"].astype(np.int64)) if "labels" in arrays.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ConfigError(f"{field}: '{file}' is not a .npz with an 'images' array ({error}); save one with "
                          "numpy.savez(path, images=..., labels=...)") from None
    if images.ndim not in (3, 4) or len(images) == 0 or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise ConfigError(f"{field}: '{file}' has images of shape {images.shape}; give (N, H, W) or (N, H, W, C) "
                          "with C 1, 3 or 4 and N >= 1")
    if labels is not None and len(labels) != len(images):
        raise ConfigError(f"{field}: '{file}' has {len(images)} images but {len(labels)} labels; give one per image")
    pixels = images if images.dtype == np.uint8 else (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
    classes = tuple(str(label) for label in sorted(set(labels.tolist()))) if labels is not None else ()
    return ImageSet(str(file), len(pixels), lambda index: Image.fromarray(pixels[index].squeeze()), labels, classes,
                    lambda: sha256_file(file))


def _saved_dataset_images(folder: Path, field: str) -> ImageSet:
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    if isinstance(loaded, datasets.DatasetDict):
        raise ConfigError(f"{field}: '{folder}' holds the splits {', '.join(loaded)}; point it at one split's "
                          "folder")
    image_column = next((name for name, feature in loaded.features.items() if isinstance(feature, datasets.Image)),
                        None)
    if image_column is None:
        raise ConfigError(f"{field}: '{folder}' has no Image column (columns: {', '.join(loaded.column_names)}); "
                          "cast the image column with datasets.Image()")
    label_column = next((name for name, feature in loaded.features.items()
                         if isinstance(feature, datasets.ClassLabel)),
                        next((name for name in LABEL_COLUMNS if name in loaded.column_names), None))
    labels = torch.tensor(loaded[label_column]) if label_column is not None else None
    feature = loaded.features.get(label_column) if label_column is not None else None
    classes = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else ()
    return ImageSet(str(folder), len(loaded), lambda index: loaded[index][image_column], labels, classes,
                    lambda: sha256_text(",".join(sha256_file(file) for file in sorted(folder.glob("*.arrow")))))


def sample_indices(count: int, num_samples: int, seed: int, field: str) -> torch.Tensor:
    """`num_samples` distinct image indices of `count`, in a seeded random order."""
    if num_samples > count:
        raise ConfigError(f"{field}: num_samples {num_samples} is more than the {count} images of the source; lower "
                          f"num_samples to at most {count} or add images")
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:num_samples]


def pixel_values(images: ImageSet, indices: torch.Tensor, processor: Any, config: Any, fixed_size: bool,
                 field: str, batch_size: int = 64) -> torch.Tensor:
    """The chosen images as the model takes them, (N, C, H, W) float32, by the model's image processor; an image
    with another channel count than the model's, or a processed size the model cannot take, is refused naming
    `field`."""
    channels = int(getattr(config, "num_channels", 3))
    batches = []
    for start in range(0, len(indices), batch_size):
        chosen = [images.image(int(index)) for index in indices[start:start + batch_size]]
        for index, image in zip(indices[start:start + batch_size].tolist(), chosen, strict=True):
            found = CHANNELS.get(image.mode, len(image.getbands()))
            if found != channels:
                raise ConfigError(f"{field}: image {index} of '{images.source}' has {found} channel(s) ({image.mode}) "
                                  f"but the model takes {channels}; convert the images (PIL: "
                                  f"image.convert('{'RGB' if channels == 3 else 'L'}'))")
        batches.append(processor(images=[image.convert("RGB") if channels == 3 else image for image in chosen],
                                 return_tensors="pt")["pixel_values"].to(torch.float32))
    pixels = torch.cat(batches)
    patch, height, width = int(config.patch_size), int(pixels.shape[-2]), int(pixels.shape[-1])
    expected = int(config.image_size)
    if (fixed_size and (height, width) != (expected, expected)) or height % patch or width % patch:
        raise ConfigError(f"{field}: the image processor gives {height}x{width} images but the model takes "
                          f"{expected}x{expected} (patches of {patch}); fix the processor's size in "
                          "preprocessor_config.json or use the model's own processor")
    return pixels


def image_manifest(images: ImageSet, indices: torch.Tensor, seed: int | None, processor: Any,
                   pixels: torch.Tensor) -> ImageManifest:
    return ImageManifest(source=images.source, sha256=images.sha256, images=len(indices), source_images=images.count,
                         seed=seed, indices_sha256=sha256_text(",".join(map(str, indices.tolist()))),
                         processor=type(processor).__name__,
                         processor_sha256=sha256_text(processor.to_json_string()), shape=tuple(pixels.shape))


def prepare_images(model_dir: Path, images: ImageSet, indices: torch.Tensor, field: str,
                   processor: Any = None) -> torch.Tensor:
    """The chosen images as the model in `model_dir` takes them: `pixel_values` with the model's own processor
    (unless one is given), its config, and whether it takes its configured image size only."""
    from transformers import AutoConfig

    from pruning.models.architectures import adapter_for_model_type
    from pruning.models.vision import image_processor

    config = AutoConfig.from_pretrained(model_dir)
    fixed = adapter_for_model_type(str(config.model_type)).fixed_image_size
    return pixel_values(images, indices, processor or image_processor(model_dir), config, fixed, field)

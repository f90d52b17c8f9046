"""Pre-training images: the same inputs as `grounded run` (folders, globs, lists, manifests), read with
`grounded.io.load_image`, and MAE's augmentation: a random resized crop (area 20-100%, aspect 3/4-4/3,
bicubic) and a horizontal flip, normalised by ImageNet's mean and std as MAE and SAM both do.

Bad files do not stop a run: a file whose header cannot be read, or an image smaller than one patch,
is left out when the set is built; one that fails to decode later is left out then and replaced by the
next good image. Each is reported once (`errors`, and errors.jsonl in the run's folder). Every draw
comes from a generator the caller passes, so a step's crops depend on (seed, step) only."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..io.image import load_image
from ..io.sources import IMAGE_EXTENSIONS, discover

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NoImagesError(ValueError):
    """The inputs hold no usable image."""


def crop_box(height: int, width: int, rng: np.random.Generator, scale: Sequence[float] = (0.2, 1.0),
             ratio: Sequence[float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop, torchvision's algorithm: ten tries at a
    random area fraction and log-uniform aspect ratio, else the largest centred crop in range."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float, ImageNet-normalised."""
    x = torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def denormalise(x: torch.Tensor) -> np.ndarray:
    """3 x H x W normalised -> H x W x 3 uint8 (clipped)."""
    x = x.detach().float().cpu() * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


class ImageSet:
    """The images of `inputs` for pre-training at `image_size`, each at least `min_size` pixels a side.

    `on_error(source, reason)` is called once per bad file (besides `errors`)."""

    def __init__(self, inputs: Sequence[str], image_size: int, min_size: int = 1, *,
                 crop_scale: Sequence[float] = (0.2, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: bool = True, cache_images: int = 64, on_error: Optional[Callable[[str, str], None]] = None):
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {list(crop_scale)}")
        if not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {list(crop_ratio)}")
        self.image_size, self.min_size = image_size, min_size
        self.crop_scale, self.crop_ratio, self.hflip = tuple(crop_scale), tuple(crop_ratio), hflip
        self.errors: List[Tuple[str, str]] = []
        self._on_error = on_error
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cache_size = cache_images
        found = discover(list(inputs))
        if not found:
            raise NoImagesError(f"no image files in {', '.join(map(str, inputs))} (a folder is searched recursively "
                                f"for {', '.join(IMAGE_EXTENSIONS)})")
        self.items = [item for item in found if item.path is not None and self._header_ok(item.source, item.path)]
        if not self.items:
            reasons = "; ".join(f"{s}: {r}" for s, r in self.errors[:5])
            raise NoImagesError(f"none of the {len(found)} inputs is a usable image ({reasons})")
        self._bad: set = set()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def sources(self) -> List[str]:
        return [item.source for item in self.items]

    def _report(self, source: str, reason: str) -> None:
        self.errors.append((source, reason))
        if self._on_error is not None:
            self._on_error(source, reason)

    def _header_ok(self, source: str, path: Path) -> bool:
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Exception as err:  # noqa: BLE001 - any unreadable header means: skip and report
            self._report(source, f"not a readable image ({err.__class__.__name__}: {str(err)[:160]})")
            return False
        if min(width, height) < self.min_size:
            self._report(source, f"{width}x{height} is smaller than one {self.min_size}-pixel patch")
            return False
        return True

    def pixels(self, index: int) -> np.ndarray:
        """The decoded image (H x W x 3 uint8); raises ValueError for a bad file."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image = load_image(self.items[index].path)
        if min(image.shape[:2]) < self.min_size:
            raise ValueError(f"{image.shape[1]}x{image.shape[0]} is smaller than one {self.min_size}-pixel patch")
        self._cache[index] = image
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image

    def good_pixels(self, index: int) -> np.ndarray:
        """The image at `index`, or, when that file turns out bad, the next good one (reported once)."""
        for k in range(len(self.items)):
            i = (index + k) % len(self.items)
            if i in self._bad:
                continue
            try:
                return self.pixels(i)
            except (OSError, ValueError) as err:
                self._bad.add(i)
                self._report(self.items[i].source, str(err))
        raise NoImagesError("every image failed to decode: " + "; ".join(f"{s}: {r}" for s, r in self.errors[-5:]))

    def sample(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        """A random resized crop (and flip) of image `index`: 3 x S x S, normalised."""
        image = self.good_pixels(index)
        top, left, h, w = crop_box(image.shape[0], image.shape[1], rng, self.crop_scale, self.crop_ratio)
        flip = self.hflip and rng.random() < 0.5
        return self._resized(image, (left, top, left + w, top + h), flip)

    def center(self, index: int) -> torch.Tensor:
        """The largest centred square, resized: for figures and held-out losses that must not move."""
        image = self.good_pixels(index)
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        return self._resized(image, (left, top, left + side, top + side), False)

    def _resized(self, image: np.ndarray, box, flip: bool) -> torch.Tensor:
        size = self.image_size
        out = Image.fromarray(image).resize((size, size), Image.BICUBIC, box=box)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return normalise(np.asarray(out))

    def batch(self, indices: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
        return torch.stack([self.sample(i, rng) for i in indices])


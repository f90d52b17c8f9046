"""Masked crops: what CLIP sees of one mask.

The crop is the mask's box (plus a margin), with every pixel outside the mask set to a plain
background, padded to a square of the same background. Padding first means the model's own
preprocessing (resize the short side, centre-crop) keeps the whole object instead of cutting the
long side of a thin one. The default background is CLIP's mean colour, which normalises to zero:
the background says nothing to the image encoder.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

# OpenAI CLIP's normalisation mean, in 0..255.
CLIP_MEAN_RGB: Tuple[int, int, int] = (122, 116, 104)


def mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight box (x0, y0, x1, y1; x1/y1 exclusive) of a non-empty HxW mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(ys) == 0:
        raise ValueError("an empty mask has no crop")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def masked_crop(image: np.ndarray, mask: np.ndarray, background: Sequence[int] = CLIP_MEAN_RGB,
                margin: float = 0.1, square: bool = True) -> np.ndarray:
    """The HxWx3 uint8 crop of `image` around `mask` (HxW bool, the image's size), pixels outside
    the mask set to `background`; `margin` widens the box by that fraction of its size on each
    side; `square` pads the crop to a square with the background."""
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3, got shape {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask is {mask.shape[0]}x{mask.shape[1]} but the image is {image.shape[0]}x{image.shape[1]}")
    x0, y0, x1, y1 = mask_box(mask)
    pad_x, pad_y = int(round((x1 - x0) * margin)), int(round((y1 - y0) * margin))
    height, width = mask.shape
    x0, y0 = max(0, x0 - pad_x), max(0, y0 - pad_y)
    x1, y1 = min(width, x1 + pad_x), min(height, y1 + pad_y)
    fill = np.asarray(background, dtype=np.uint8)
    crop = np.where(mask[y0:y1, x0:x1, None], image[y0:y1, x0:x1], fill)
    if not square:
        return np.ascontiguousarray(crop)
    h, w = crop.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = crop
    return out


def masked_crops(image: np.ndarray, masks: np.ndarray, **kwargs) -> List[np.ndarray]:
    """`masked_crop` of each of N masks (NxHxW bool); an empty mask gives a crop of background
    only (so its score is the background's, never an error)."""
    out = []
    for mask in masks:
        if mask.any():
            out.append(masked_crop(image, mask, **kwargs))
        else:
            blank = np.empty((8, 8, 3), np.uint8)
            blank[:] = np.asarray(kwargs.get("background", CLIP_MEAN_RGB), np.uint8)
            out.append(blank)
    return out

"""Instance masks drawn over an image: a translucent fill and a solid outline, one colour each."""

from __future__ import annotations

import colorsys
from typing import Any, Iterable, Sequence

import numpy as np

from .masks import record_mask


def instance_colors(n: int, seed: int = 0) -> np.ndarray:
    """n distinct, saturated RGB colours (uint8), the same for the same n and seed: hues step by the
    golden ratio, so neighbours in the list never look alike."""
    hues = (seed * 0.1 + np.arange(n) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.85 if i % 2 else 0.65, 0.95) for i, h in enumerate(hues)]
    return np.round(np.array(rgb, dtype=np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of a mask within `width` pixels of its border (8-neighbourhood, no opencv)."""
    inside = mask.copy()
    for _ in range(width):
        padded = np.pad(inside, 1, constant_values=False)
        eroded = inside.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                eroded &= padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
        inside = eroded
    return mask & ~inside


def overlay(image: Any, masks_or_records: Iterable, alpha: float = 0.45, outline_width: int = 2,
            colors: Sequence[Sequence[int]] | np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 picture of the image with each mask filled (blended by `alpha`) and outlined in
    its own colour. Masks are generator records (any output_mode), RLE dicts or HxW arrays; larger
    masks are drawn first so smaller ones on top stay visible. `image` is anything `load_image` reads."""
    from .image import load_image

    canvas = load_image(image).astype(np.float32)
    masks = [record_mask(m) for m in masks_or_records]
    for m in masks:
        if m.shape != canvas.shape[:2]:
            raise ValueError(f"mask of shape {m.shape} does not fit the {canvas.shape[1]}x{canvas.shape[0]} image")
    palette = instance_colors(len(masks), seed) if colors is None else np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(palette) < len(masks):
        raise ValueError(f"{len(palette)} colours for {len(masks)} masks")
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        window = _bounding_window(masks[i], outline_width)
        if window is None:
            continue
        mask, region = masks[i][window], canvas[window]  # work on the mask's box only
        color = palette[i].astype(np.float32)
        region[mask] = (1 - alpha) * region[mask] + alpha * color
        if outline_width > 0:
            region[mask_outline(mask, outline_width)] = color
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)


def _bounding_window(mask: np.ndarray, margin: int):
    """Slices of the mask's bounding box grown by `margin` (None for an empty mask)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1), slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))

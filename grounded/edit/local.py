"""Edits that need no diffusion model: removing an object by OpenCV inpainting (Telea or
Navier-Stokes) and recolouring it in OKLCH, keeping its shading. Plus the mask handling every
edit shares: dilation, feathering inside the dilated mask, and compositing the original back
outside it, so no pixel outside the (dilated) mask ever changes."""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np

from .colors import color_rgb
from .colorspace import oklch_to_srgb_in_gamut, srgb_to_oklch

REMOVE_METHODS = ("telea", "ns")


def as_mask(mask: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.any(axis=0) if mask.shape[0] < mask.shape[-1] else mask.any(axis=-1)
    if mask.shape != tuple(shape):
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}")
    return mask.astype(bool)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by `pixels` in every direction (an elliptical structuring element)."""
    if pixels <= 0 or not mask.any():
        return mask.astype(bool)
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def feather(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A float alpha in [0, 1]: 1 deep inside `mask`, ramping to 0 over `pixels` towards its edge,
    and exactly 0 outside it (the ramp lies inside the mask, so nothing outside is touched)."""
    mask = mask.astype(bool)
    if pixels <= 0 or not mask.any():
        return mask.astype(np.float32)
    import cv2

    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    return np.clip(inside / float(pixels), 0.0, 1.0).astype(np.float32) * mask


def edit_region(mask: np.ndarray, dilate_px: int, feather_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """(dilated mask, alpha): the pixels an edit may change and how much of the edit each takes.
    Feathering reaches inward from the dilated edge, so with feather <= dilation the object
    itself is fully edited."""
    grown = dilate(mask, dilate_px)
    return grown, feather(grown, feather_px)


def composite(original: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """original * (1 - alpha) + edited * alpha, in uint8; where alpha is 0 the original's exact
    bytes are kept (no rounding drift)."""
    if edited.shape != original.shape:
        raise ValueError(f"edited image {edited.shape} and original {original.shape} differ in size")
    a = alpha.astype(np.float32)[..., None]
    mixed = original.astype(np.float32) * (1 - a) + edited.astype(np.float32) * a
    out = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    keep = alpha <= 0
    out[keep] = original[keep]
    return out


def remove_object(image: np.ndarray, mask: np.ndarray, method: str = "telea", radius: int = 5,
                  dilate_px: int = 6, feather_px: int = 0) -> np.ndarray:
    """The object under `mask` painted out from its surroundings by OpenCV inpainting (Telea's
    fast marching method or Navier-Stokes). The mask is dilated first so the object's soft edge
    and shadow-fringe go too."""
    import cv2

    if method not in REMOVE_METHODS:
        raise ValueError(f"unknown removal method {method!r}; use one of {list(REMOVE_METHODS)}")
    mask = as_mask(mask, image.shape[:2])
    if not mask.any():
        raise ValueError("the mask to remove is empty: nothing was found to remove")
    region, alpha = edit_region(mask, dilate_px, feather_px)
    if region.all():
        raise ValueError("the mask covers the whole image: there is nothing around it to fill it from")
    flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
    filled = cv2.inpaint(np.ascontiguousarray(image), region.astype(np.uint8) * 255, float(radius), flag)
    return composite(image, filled, alpha)


def recolor(image: np.ndarray, mask: np.ndarray, color: Union[str, Tuple[int, int, int]], strength: float = 1.0,
            dilate_px: int = 0, feather_px: int = 2) -> np.ndarray:
    """The object under `mask` in another colour: in OKLCH, hue and chroma become the target's,
    and lightness keeps each pixel's offset from the object's mean (its shading: highlights,
    shadows, texture) around the target's lightness. `strength` < 1 blends with the original."""
    mask = as_mask(mask, image.shape[:2])
    if not mask.any():
        raise ValueError("the mask to recolour is empty: nothing was found to recolour")
    rgb = color_rgb(color) if isinstance(color, str) else tuple(int(c) for c in color)
    target = srgb_to_oklch(np.array(rgb, np.float64).reshape(1, 3) / 255.0)[0]
    region, alpha = edit_region(mask, dilate_px, feather_px)
    pixels = srgb_to_oklch(image[region].astype(np.float64) / 255.0)
    lightness = pixels[:, 0]
    # Shading: offsets from the mean lightness, kept; a light target on a dark object lifts it.
    new_l = np.clip(target[0] + (lightness - lightness.mean()), 0.02, 0.99)
    # Chroma follows the target's, scaled down where the original was near black or white
    # (shadows and speculars stay neutral, as they would be in a real object of that colour).
    edge = np.clip(np.minimum(new_l, 1 - new_l) / 0.12, 0, 1)
    new = np.stack([new_l, target[1] * edge, np.full_like(new_l, target[2])], axis=-1)
    out = image.copy()
    out[region] = np.clip(np.rint(oklch_to_srgb_in_gamut(new) * 255.0), 0, 255).astype(np.uint8)
    return composite(image, out, alpha * float(np.clip(strength, 0.0, 1.0)))

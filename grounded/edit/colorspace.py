"""sRGB <-> OKLab / OKLCH (Björn Ottosson's perceptual colour space), in numpy, on float images
in [0, 1]. Recolouring works here: a hue turned in OKLCH keeps the perceived lightness, so the
shading of the object (its highlights and shadows) survives the change of colour."""

from __future__ import annotations

import numpy as np

_M1 = np.array([[0.4122214708, 0.5363325363, 0.0514459929],
                [0.2119034982, 0.6806995451, 0.1073969566],
                [0.0883024619, 0.2817188376, 0.6299787005]])
_M2 = np.array([[0.2104542553, 0.7936177850, -0.0040720468],
                [1.9779984951, -2.4285922050, 0.4505937099],
                [0.0259040371, 0.7827717662, -0.8086757660]])
_M1_INV = np.linalg.inv(_M1)
_M2_INV = np.linalg.inv(_M2)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0.0, None)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)


def srgb_to_oklab(rgb: np.ndarray) -> np.ndarray:
    lms = srgb_to_linear(rgb) @ _M1.T
    return np.cbrt(lms) @ _M2.T


def oklab_to_srgb(lab: np.ndarray) -> np.ndarray:
    lms = (np.asarray(lab, np.float64) @ _M2_INV.T) ** 3
    return linear_to_srgb(lms @ _M1_INV.T)


def srgb_to_oklch(rgb: np.ndarray) -> np.ndarray:
    lab = srgb_to_oklab(rgb)
    out = np.empty_like(lab)
    out[..., 0] = lab[..., 0]
    out[..., 1] = np.hypot(lab[..., 1], lab[..., 2])
    out[..., 2] = np.arctan2(lab[..., 2], lab[..., 1])  # radians
    return out


def oklch_to_srgb(lch: np.ndarray) -> np.ndarray:
    lch = np.asarray(lch, np.float64)
    lab = np.stack([lch[..., 0], lch[..., 1] * np.cos(lch[..., 2]), lch[..., 1] * np.sin(lch[..., 2])], axis=-1)
    return oklab_to_srgb(lab)


def oklch_to_srgb_in_gamut(lch: np.ndarray, steps: int = 12) -> np.ndarray:
    """OKLCH -> sRGB, reducing the chroma of colours sRGB cannot show (keeping lightness and hue)
    instead of clipping channels, which would shift the hue."""
    lch = np.array(lch, np.float64)
    lo = np.zeros(lch.shape[:-1])
    hi = lch[..., 1].copy()
    rgb = oklch_to_srgb(lch)
    outside = ((rgb < -1e-4) | (rgb > 1 + 1e-4)).any(axis=-1)
    if not outside.any():
        return np.clip(rgb, 0, 1)
    for _ in range(steps):  # bisection on chroma, only where out of gamut
        mid = (lo + hi) / 2
        trial = lch.copy()
        trial[..., 1] = mid
        bad = ((oklch_to_srgb(trial) < -1e-4) | (oklch_to_srgb(trial) > 1 + 1e-4)).any(axis=-1)
        hi = np.where(outside & bad, mid, hi)
        lo = np.where(outside & ~bad, mid, lo)
    lch[..., 1] = np.where(outside, lo, lch[..., 1])
    return np.clip(oklch_to_srgb(lch), 0, 1)


def hue_distance(a: np.ndarray, b: float) -> np.ndarray:
    """Angular distance in radians between hues."""
    d = np.abs(np.asarray(a) - b) % (2 * np.pi)
    return np.minimum(d, 2 * np.pi - d)

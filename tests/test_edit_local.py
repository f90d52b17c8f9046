"""Edits without a diffusion model: OpenCV removal, OKLCH recolouring, and the mask handling
(dilation, feathering inside the dilated mask, compositing) that keeps every pixel outside the
dilated mask unchanged."""

import numpy as np
import pytest

from grounded.edit.colors import color_phrase, color_rgb
from grounded.edit.colorspace import hue_distance, oklch_to_srgb, srgb_to_oklch
from grounded.edit.local import composite, dilate, edit_region, feather, recolor, remove_object


def scene(h=96, w=128):
    """A smooth vertical gradient with a shaded red disc (a sphere lit from the top left)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([60 + 100 * y / h, 120 + 60 * x / w, 180 - 50 * y / h], axis=-1)
    cy, cx, r = 48, 60, 22
    disc = (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    shade = np.clip(1.1 - 0.6 * np.hypot(y - cy + 8, x - cx + 8) / r, 0.3, 1.0)
    image[disc] = np.stack([210 * shade, 40 * shade, 30 * shade], axis=-1)[disc]
    return np.clip(image, 0, 255).astype(np.uint8), disc


def test_oklch_round_trip():
    rng = np.random.default_rng(0)
    rgb = rng.random((50, 3))
    assert np.allclose(oklch_to_srgb(srgb_to_oklch(rgb)), rgb, atol=1e-6)
    white = srgb_to_oklch(np.ones((1, 3)))[0]
    assert white[0] == pytest.approx(1.0, abs=1e-4) and white[1] < 1e-4


def test_colour_phrases():
    assert color_phrase("light blue".split()) == "light blue"
    assert color_phrase("reddish".split()) == "red"
    assert color_phrase(["blue-green", "coloured"]) == "blue green"
    assert color_phrase("a monkey".split()) is None
    assert color_phrase("navy".split()) == "navy"
    light, dark = np.array(color_rgb("light blue")), np.array(color_rgb("dark blue"))
    assert light.sum() > np.array(color_rgb("blue")).sum() > dark.sum()
    with pytest.raises(ValueError, match="not a colour"):
        color_rgb("monkey")


def test_dilate_and_feather_stay_inside_the_grown_mask():
    mask = np.zeros((40, 40), bool)
    mask[15:25, 15:25] = True
    grown, alpha = edit_region(mask, 4, 3)
    assert grown[mask].all() and grown.sum() > mask.sum()
    assert not grown[:10].any()  # 4 px: rows 11.. only
    assert (alpha[~grown] == 0).all()
    assert (alpha[mask] == 1).all()  # feather <= dilation: the object itself fully edited
    assert 0 < alpha[grown & ~mask].min() < 1
    assert (feather(mask, 0) == mask).all() and (dilate(mask, 0) == mask).all()


def test_composite_keeps_the_original_bytes_where_alpha_is_zero():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    alpha = np.zeros((20, 30), np.float32)
    alpha[5:10, 5:10] = 0.5
    out = composite(a, b, alpha)
    assert (out[alpha == 0] == a[alpha == 0]).all()
    mixed = (a[7, 7].astype(float) + b[7, 7]) / 2
    assert np.abs(out[7, 7] - mixed).max() <= 1


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_remove_fills_the_object_from_its_surroundings(method):
    image, disc = scene()
    out = remove_object(image, disc, method=method, dilate_px=3)
    grown = dilate(disc, 3)
    assert (out[~grown] == image[~grown]).all()
    # where the red disc was, the colour is now the background's (bluish-green gradient), not red
    ring = dilate(disc, 10) & ~grown
    around = image[ring].astype(float).mean(axis=0)
    filled = out[disc].astype(float).mean(axis=0)
    before = image[disc].astype(float).mean(axis=0)
    assert np.abs(before - around).max() > 80  # the red disc stood out from its surroundings...
    assert np.abs(filled - around).max() < 25  # ...and the fill matches them
    assert out[disc].std(axis=0).max() < 30  # smooth, no red left inside


def test_remove_rejects_empty_and_full_masks():
    image, disc = scene()
    with pytest.raises(ValueError, match="empty"):
        remove_object(image, np.zeros_like(disc))
    with pytest.raises(ValueError, match="whole image"):
        remove_object(image, np.ones_like(disc))
    with pytest.raises(ValueError, match="method"):
        remove_object(image, disc, method="magic")
    with pytest.raises(ValueError, match="mask is"):
        remove_object(image, disc[:10])


@pytest.mark.parametrize("color", ["blue", "green", "purple", "yellow"])
def test_recolor_turns_the_hue_and_keeps_the_shading(color):
    image, disc = scene()
    out = recolor(image, disc, color, feather_px=0)
    assert (out[~disc] == image[~disc]).all()
    before = srgb_to_oklch(image[disc] / 255.0)
    after = srgb_to_oklch(out[disc] / 255.0)
    target = srgb_to_oklch(np.array(color_rgb(color), float).reshape(1, 3) / 255.0)[0]
    chromatic = after[:, 1] > 0.03
    assert chromatic.mean() > 0.8
    assert np.median(hue_distance(after[chromatic, 2], target[2])) < 0.15  # radians: within ~9 degrees
    # shading: lightness keeps its ups and downs (correlation) and most of its range
    corr = np.corrcoef(before[:, 0], after[:, 0])[0, 1]
    assert corr > 0.95, corr
    assert after[:, 0].std() > 0.7 * before[:, 0].std()


def test_recolor_to_white_and_black_and_partial_strength():
    image, disc = scene()
    white = srgb_to_oklch(recolor(image, disc, "white")[disc] / 255.0)
    black = srgb_to_oklch(recolor(image, disc, "black")[disc] / 255.0)
    assert white[:, 0].mean() > 0.85 and black[:, 0].mean() < 0.35
    assert white[:, 1].mean() < 0.03 and black[:, 1].mean() < 0.03
    half = recolor(image, disc, "blue", strength=0.5, feather_px=0)
    full = recolor(image, disc, "blue", feather_px=0)
    mid = (image[disc].astype(float) + full[disc]) / 2
    assert np.abs(half[disc] - mid).max() <= 1
    with pytest.raises(ValueError, match="empty"):
        recolor(image, np.zeros_like(disc), "blue")

"""Synthetic coloured shapes with captions and instance masks, deterministic by seed.

A tiny CLIP trained on these (`grounded.testing.clip`) learns colour and shape words in seconds, so
tests of text-driven code (CLIP ranking, SAM's text prompt) can check that the right object is
chosen, which a random model cannot show.

    scenes = shapes_dataset(8, size=96, seed=1, shapes_per_image=3)
    scene = scenes[0]
    scene.image        # HxWx3 uint8, plain background
    scene.masks        # KxHxW bool, one per shape (shapes never overlap)
    scene.captions     # ["a red circle", "a blue square", ...], one per shape
    scene.boxes        # Kx4 float32 xyxy (x1/y1 exclusive)

Only numpy and Pillow are used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

COLORS = {
    "red": (215, 35, 35),
    "green": (40, 170, 50),
    "blue": (40, 70, 215),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")


def caption(color: str, shape: str) -> str:
    """The caption of one shape: "a red circle"."""
    return f"a {color} {shape}"


def all_captions() -> List[str]:
    """Every (colour, shape) caption, in a fixed order (colours outer, shapes inner)."""
    return [caption(c, s) for c in COLORS for s in SHAPES]


@dataclass
class ShapeScene:
    """One image with K shapes: their masks, colours and kinds."""

    image: np.ndarray  # HxWx3 uint8
    masks: np.ndarray  # KxHxW bool
    colors: List[str]
    shapes: List[str]
    background: Tuple[int, int, int]

    @property
    def captions(self) -> List[str]:
        return [caption(c, s) for c, s in zip(self.colors, self.shapes)]

    @property
    def labels(self) -> List[int]:
        """Index of each shape's caption in `all_captions()`."""
        names = all_captions()
        return [names.index(c) for c in self.captions]

    @property
    def boxes(self) -> np.ndarray:
        out = np.zeros((len(self.masks), 4), np.float32)
        for i, mask in enumerate(self.masks):
            ys, xs = np.nonzero(mask)
            out[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        return out

    def index_of(self, text: str) -> Optional[int]:
        """The shape whose caption is `text`, or None."""
        return self.captions.index(text) if text in self.captions else None


def _background(rng: np.random.Generator) -> Tuple[int, int, int]:
    # Neutral greys with a slight tint: never close to a shape colour.
    level = int(rng.integers(60, 200))
    tint = rng.integers(-12, 13, size=3)
    return tuple(int(v) for v in np.clip(level + tint, 0, 255))


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    elif shape == "square":
        # Rotated a little so squares are not always axis-aligned boxes.
        corners = [angle + np.pi / 4 + k * np.pi / 2 for k in range(4)]
        draw.polygon([(cx + r * 1.1 * np.cos(a), cy + r * 1.1 * np.sin(a)) for a in corners], fill=1)
    elif shape == "triangle":
        corners = [angle - np.pi / 2 + k * 2 * np.pi / 3 for k in range(3)]
        draw.polygon([(cx + r * 1.2 * np.cos(a), cy + r * 1.2 * np.sin(a)) for a in corners], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return np.asarray(canvas, dtype=bool)


def draw_scene(rng: np.random.Generator, size: int = 64, n_shapes: int = 1,
               kinds: Optional[Sequence[Tuple[str, str]]] = None, max_tries: int = 200) -> ShapeScene:
    """One scene of `n_shapes` non-overlapping shapes. `kinds` fixes the (colour, shape) pairs;
    by default they are drawn at random, all different within the scene."""
    if kinds is None:
        pairs = [(c, s) for c in COLORS for s in SHAPES]
        if n_shapes > len(pairs):
            raise ValueError(f"at most {len(pairs)} different shapes fit one scene, asked for {n_shapes}")
        kinds = [pairs[i] for i in rng.choice(len(pairs), n_shapes, replace=False)]
    background = _background(rng)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    # One shape fills much of the image; several share it.
    r_lo, r_hi = (0.18, 0.34) if len(kinds) == 1 else (0.09, 0.16)
    occupied = np.zeros((size, size), bool)
    masks, colors, shapes = [], [], []
    for color, shape in kinds:
        for _ in range(max_tries):
            r = rng.uniform(r_lo, r_hi) * size
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            mask = _shape_mask(shape, size, cx, cy, r, rng.uniform(-0.15, 0.15))
            # Keep a gap of a few pixels between shapes so each is its own region.
            grown = _dilate(mask, 2)
            if mask.any() and not (grown & occupied).any():
                break
        else:
            raise RuntimeError(f"could not place {len(kinds)} shapes without overlap in a {size}x{size} image")
        occupied |= mask
        jitter = rng.integers(-15, 16, size=3)
        image[mask] = np.clip(np.array(COLORS[color]) + jitter, 0, 255).astype(np.uint8)
        masks.append(mask)
        colors.append(color)
        shapes.append(shape)
    return ShapeScene(image=image, masks=np.stack(masks), colors=colors, shapes=shapes, background=background)


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def shapes_dataset(n: int, size: int = 64, seed: int = 0,
                   shapes_per_image: Union[int, Tuple[int, int]] = 1) -> List[ShapeScene]:
    """`n` scenes of `size`x`size` pixels, the same for the same arguments. `shapes_per_image` is a
    count or an inclusive (min, max) range. Scenes with one shape are what the tiny CLIP trains on;
    scenes with several are what text-to-mask tests pick from."""
    rng = np.random.default_rng(seed)
    lo, hi = (shapes_per_image, shapes_per_image) if isinstance(shapes_per_image, int) else shapes_per_image
    return [draw_scene(rng, size, int(rng.integers(lo, hi + 1))) for _ in range(n)]

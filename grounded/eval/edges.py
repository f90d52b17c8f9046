"""The SAM paper's zero-shot edge maps (appendix D.2) and the edge non-maximum suppression they end with.

Recipe: prompt SAM with a 16x16 grid of foreground points (three masks each, 768 for the grid), no
predicted-IoU or stability filter; remove redundant masks by box NMS (IoU 0.7, ordered by predicted
IoU, as the automatic mask generator does); Sobel-filter each remaining mask's probability map
(sigmoid of the unthresholded logits) and keep the response only on the mask's boundary band (pixels
within one pixel of the thresholded mask's contour); take the pixel-wise maximum over masks,
normalise it linearly to [0, 1], and thin it with edge NMS.

`edge_nms` follows the structured-edge toolbox's edgesNms (Dollar and Zitnick): the orientation at
each pixel comes from the second derivatives of the triangle-smoothed map, a pixel is kept when it
is at least as strong (times 1.01) as the two points one pixel away across the edge (bilinear
samples), and responses within 5 pixels of the image border are faded linearly. The toolbox's C code
lives in opencv-contrib, which cannot be installed beside opencv-python: this is a numpy rewrite.
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

import numpy as np

GRID = 16
NMS_IOU = 0.7


def grid_points(height: int, width: int, n: int = GRID) -> np.ndarray:
    """The n x n grid of point prompts the automatic mask generator uses (cell centres), as (x, y) pixels."""
    offset = 1 / (2 * n)
    side = np.linspace(offset, 1 - offset, n)
    xs, ys = np.meshgrid(side * width, side * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)


def _sobel_magnitude(prob: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.hypot(ndimage.sobel(prob, axis=0), ndimage.sobel(prob, axis=1))


class EdgeAccumulator:
    """Collects the masks of one image chunk by chunk (so their full-size logits never all sit in
    memory), then builds the edge map."""

    def __init__(self, height: int, width: int):
        self.shape = (height, width)
        self.boxes: List[np.ndarray] = []
        self.scores: List[float] = []
        self.responses: List[Tuple[np.ndarray, np.ndarray]] = []  # per mask: flat indices, values

    def add(self, logits: np.ndarray, scores: np.ndarray) -> None:
        """logits: N x H x W unthresholded mask logits; scores: N predicted IoUs."""
        for logit, score in zip(logits, scores):
            mask = logit > 0
            if mask.any():
                ys, xs = np.nonzero(mask)
                box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
            else:
                box = np.zeros(4, np.float32)
            prob = 1 / (1 + np.exp(-logit.astype(np.float64)))
            band = _boundary_band(mask)
            idx = np.flatnonzero(band)
            self.boxes.append(box)
            self.scores.append(float(score))
            self.responses.append((idx, _sobel_magnitude(prob).ravel()[idx]))

    def edge_map(self, nms: bool = True) -> np.ndarray:
        """The normalised, thinned edge map (H x W, values in [0, 1])."""
        import torch
        from torchvision.ops import nms as box_nms

        combined = np.zeros(self.shape[0] * self.shape[1])
        if self.boxes:
            keep = box_nms(torch.as_tensor(np.stack(self.boxes)), torch.as_tensor(self.scores, dtype=torch.float32), NMS_IOU)
            for k in keep.tolist():
                idx, values = self.responses[k]
                np.maximum.at(combined, idx, values)
        combined = combined.reshape(self.shape)
        low, high = combined.min(), combined.max()
        combined = (combined - low) / (high - low) if high > low else np.zeros_like(combined)
        return edge_nms(combined) if nms else combined


def sam_edge_map(logit_chunks: Iterable[Tuple[np.ndarray, np.ndarray]], height: int, width: int) -> np.ndarray:
    """The edge map from chunks of (N x 3 x H x W logits, N x 3 predicted IoUs) of the grid prompts."""
    acc = EdgeAccumulator(height, width)
    for logits, scores in logit_chunks:
        acc.add(logits.reshape(-1, height, width), scores.reshape(-1))
    return acc.edge_map()


# ---- edge NMS -----------------------------------------------------------------------------------

def _conv_tri(image: np.ndarray, r: int) -> np.ndarray:
    """The toolbox's convTri: a separable triangle filter of radius r, symmetric padding."""
    from scipy import ndimage

    kernel = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float64)
    kernel /= kernel.sum()
    out = ndimage.convolve1d(image, kernel, axis=0, mode="reflect")
    return ndimage.convolve1d(out, kernel, axis=1, mode="reflect")


def edge_orientation(edges: np.ndarray) -> np.ndarray:
    """Edge orientation in [0, pi) from the second derivatives of the smoothed map (edgesNms's)."""
    smooth = _conv_tri(edges, 4)
    oy, ox = np.gradient(smooth)
    _, oxx = np.gradient(ox)
    oyy, oxy = np.gradient(oy)
    return np.mod(np.arctan(oyy * np.sign(-oxy) / (oxx + 1e-5)), np.pi)


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    h, w = image.shape
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    dx, dy = x - x0, y - y0
    return (image[y0, x0] * (1 - dx) * (1 - dy) + image[y0, x0 + 1] * dx * (1 - dy)
            + image[y0 + 1, x0] * (1 - dx) * dy + image[y0 + 1, x0 + 1] * dx * dy)


def edge_nms(edges: np.ndarray, radius: int = 1, border: int = 5, multiplier: float = 1.01) -> np.ndarray:
    """Suppress every pixel weaker than its neighbours across the edge (see the module docstring)."""
    edges = np.asarray(edges, np.float64)
    h, w = edges.shape
    orientation = edge_orientation(edges)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cos, sin = np.cos(orientation), np.sin(orientation)
    out = edges.copy()
    for d in range(-radius, radius + 1):
        if d:
            out[edges * multiplier < _bilinear(edges, xs + d * cos, ys + d * sin)] = 0
    s = min(border, w // 2, h // 2)
    for i in range(s):
        out[:, i] *= i / s
        out[:, w - 1 - i] *= i / s
        out[i, :] *= i / s
        out[h - 1 - i, :] *= i / s
    return out

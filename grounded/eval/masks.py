"""Mask geometry the protocols share: COCO RLE through pycocotools, IoU, area ranges, and the points
the SAM paper clicks (the most interior point of a region, a random interior point, the next
correction click)."""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np

# COCO's area ranges (pixels), as COCOeval and LVISEval define them.
AREA_RANGES = {"all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}


def area_range(area: float) -> str:
    """COCO's size class of an object: small (< 32^2 px), medium (< 96^2) or large."""
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


def encode(masks: np.ndarray) -> List[dict]:
    """NxHxW bool masks -> COCO compressed RLEs with str counts (JSON-ready)."""
    from pycocotools import mask as mask_utils

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"encode takes NxHxW masks, got shape {masks.shape}")
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def to_rle(segmentation, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation:
            return encode(np.zeros((1, height, width), bool))[0]
        return _str_counts(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return _str_counts(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return {"size": [int(s) for s in segmentation["size"]], "counts": segmentation["counts"]}
    raise ValueError(f"not a COCO segmentation (polygons or RLE): {str(segmentation)[:80]}")


def _str_counts(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode(rles: Sequence[dict]) -> np.ndarray:
    """COCO RLEs -> NxHxW bool."""
    from pycocotools import mask as mask_utils

    if not len(rles):
        return np.zeros((0, 0, 0), bool)
    with warnings.catch_warnings():
        # pycocotools 2.0.11 trips numpy 2's __array__(copy=...) deprecation inside decode; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(list(rles)).transpose(2, 0, 1).astype(bool)


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    # At most 255 per call: pycocotools 2.0.11's area() builds np.array((n,), dtype=np.uint8), which
    # numpy 2 refuses for n >= 256 (OverflowError), e.g. an image's 1000 proposals or 300 LVIS detections.
    rles = list(rles)
    parts = [np.asarray(mask_utils.area(rles[i:i + 255]), np.float64) for i in range(0, len(rles), 255)]
    return np.concatenate(parts) if parts else np.zeros(0)


def rle_boxes(rles: Sequence[dict]) -> np.ndarray:
    """XYWH boxes of RLEs (pycocotools' toBbox)."""
    from pycocotools import mask as mask_utils

    return np.asarray(mask_utils.toBbox(list(rles)), np.float64).reshape(-1, 4) if len(rles) else np.zeros((0, 4))


def iou_matrix(dt: Sequence[dict], gt: Sequence[dict], gt_crowd: Optional[Sequence[bool]] = None) -> np.ndarray:
    """IoU of every detection (rows) with every ground truth (columns), RLEs; for a crowd ground truth
    the intersection is divided by the detection's area (COCO's rule)."""
    from pycocotools import mask as mask_utils

    if not len(dt) or not len(gt):
        return np.zeros((len(dt), len(gt)))
    crowd = [int(c) for c in gt_crowd] if gt_crowd is not None else [0] * len(gt)
    return np.asarray(mask_utils.iou(list(dt), list(gt), crowd), np.float64).reshape(len(dt), len(gt))


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of two stacks of HxW masks, pairwise along the first axis (N masks against N masks)."""
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    inter = np.logical_and(a, b).sum(axis=1)
    union = np.logical_or(a, b).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def interior_point(mask: np.ndarray) -> Tuple[float, float]:
    """(x, y) of the pixel farthest from the region's boundary, the image border counting as boundary
    (the maximum of the distance transform; among equally deep pixels the one nearest their mean, so
    that a rectangle is clicked in its middle, not at its first deepest pixel)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dist == dist.max())
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(xs[k]), float(ys[k])


def center_point(mask: np.ndarray) -> Tuple[float, float]:
    """The SAM paper's first click: the maximum of the object's distance transform (computed on the
    mask alone, as grounded.sam.evaluate.interior_points does for the pinned stardist figures)."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def random_point(mask: np.ndarray, rng: np.random.Generator) -> Tuple[float, float]:
    """A pixel of the mask drawn uniformly at random."""
    ys, xs = np.nonzero(mask)
    k = int(rng.integers(len(xs)))
    return float(xs[k]), float(ys[k])


def next_click(prediction: np.ndarray, truth: np.ndarray) -> Optional[Tuple[float, float, int]]:
    """The interactive protocol's next click: the largest connected error region (false negatives or
    false positives, 4-connected; false negatives first on a tie), clicked at its most interior point
    (the image border counting as boundary); label 1 in a false negative (add), 0 in a false positive
    (remove). None when there is no error."""
    from scipy import ndimage

    rows = np.flatnonzero((prediction | truth).any(axis=1))
    cols = np.flatnonzero((prediction | truth).any(axis=0))
    if not len(rows):
        return None
    # Errors lie inside the box around prediction and truth: work there only.
    y0, x0 = rows[0], cols[0]
    window = (slice(y0, rows[-1] + 1), slice(x0, cols[-1] + 1))
    pred, true = prediction[window], truth[window]
    best = None
    for label, error in ((1, true & ~pred), (0, pred & ~true)):
        if not error.any():
            continue
        regions, n = ndimage.label(error)
        sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]
        k = int(np.argmax(sizes))
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), label, regions == k + 1)
    if best is None:
        return None
    x, y = interior_point(best[2])
    return x + x0, y + y0, best[1]


def seg_to_boundaries(labels: np.ndarray) -> np.ndarray:
    """Boundary pixels of a segmentation (BSDS's seg2bmap at the same size): a pixel whose right,
    lower or lower-right neighbour belongs to another segment."""
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:-1, :-1] |= labels[:-1, :-1] != labels[1:, 1:]
    return edge

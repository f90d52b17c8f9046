"""Instance masks as pictures and outlines: polygons (outer contours) and label maps, for masks
given as generator records (any output_mode), RLE dicts or HxW arrays. The RLE codec itself is
`grounded.rle`; writing whole result files is the writer nodes' work (`grounded.nodes.export`)."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..rle import compress_rle, decode_rle, encode_rle


def record_mask(record_or_mask: Any) -> np.ndarray:
    """The HxW bool mask of a generator record (any output_mode), an RLE dict, or a mask array."""
    if isinstance(record_or_mask, dict):
        seg = record_or_mask.get("segmentation", record_or_mask)
        return np.asarray(seg, dtype=bool) if isinstance(seg, np.ndarray) else decode_rle(seg)
    mask = np.asarray(record_or_mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be HxW, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def record_rle(record_or_mask: Any) -> dict:
    """The compressed RLE of a record, RLE dict or mask array."""
    seg = record_or_mask.get("segmentation", record_or_mask) if isinstance(record_or_mask, dict) else record_or_mask
    if isinstance(seg, dict):
        return compress_rle(seg)
    return compress_rle(encode_rle(record_mask(seg)))


def mask_to_polygons(mask: np.ndarray) -> tuple[list[list[float]], bool]:
    """Outer contours of a mask as COCO polygons [x0, y0, x1, y1, ...] (pixel centres), and whether
    the mask has holes, which polygons of outer contours cannot show (RLE keeps them). Regions
    too thin for a polygon of 3 points are left out. Needs opencv."""
    import cv2

    mask = np.ascontiguousarray(record_mask(mask), dtype=np.uint8)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return [], False
    parents = hierarchy[0][:, 3]
    polygons = [c.reshape(-1, 2).astype(float).ravel().tolist() for c, p in zip(contours, parents) if p < 0 and len(c) >= 3]
    return polygons, bool((parents >= 0).any())


def label_map(records: Iterable, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An HxW map with 0 for background and i + 1 where record i is; larger masks are painted first,
    so a mask lying on a bigger one stays visible. uint8 up to 255 instances, else uint16 (to 65535)."""
    masks = [record_mask(r) for r in records]
    if not masks and shape is None:
        raise ValueError("no masks and no shape for the label map")
    shape = masks[0].shape if masks else shape
    if len(masks) > 65535:
        raise ValueError(f"{len(masks)} instances do not fit a 16-bit label map")
    labels = np.zeros(shape, np.uint8 if len(masks) <= 255 else np.uint16)
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        labels[masks[i]] = i + 1
    return labels

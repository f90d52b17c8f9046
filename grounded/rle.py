"""Masks as COCO run-length encodings (RLE), the stored form of `Detections` masks; numpy only.

The uncompressed form is pycocotools': `{"size": [h, w], "counts": [...]}`, runs over the pixels
in column-major order, alternating and starting with zeros. The compressed form has `counts` as
COCO's ASCII string (each count stored as the difference from the count two before it, in 5-bit
groups); `compress_rle` / `decompress_rle` convert between them without pycocotools, byte for
byte as `pycocotools.mask` does. `rle_to_bbox` and `rle_area` are pycocotools' `toBbox` and `area`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def encode_rle(mask: np.ndarray) -> dict:
    """An HxW boolean mask -> uncompressed RLE `{"size": [h, w], "counts": [int, ...]}`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle takes one HxW mask, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # first pixel of every run but the first
    if flat.size and flat[0]:
        changes = np.concatenate([[0], changes])  # a mask that starts set begins with 0 zeros
    counts = np.diff(changes, prepend=0, append=h * w)
    return {"size": [h, w], "counts": counts.tolist()}


def decode_rle(rle: dict) -> np.ndarray:
    """An RLE, uncompressed (list counts) or compressed (str/bytes counts) -> HxW bool mask."""
    h, w = (int(s) for s in rle["size"])
    counts = rle["counts"]
    counts = counts_from_string(counts) if isinstance(counts, (str, bytes)) else np.asarray(counts, np.int64)
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    if flat.size != h * w:
        raise ValueError(f"RLE counts sum to {flat.size}, but size {h}x{w} has {h * w} pixels")
    return flat.reshape(w, h).T


def compress_rle(rle: dict) -> dict:
    """Uncompressed RLE -> COCO compressed RLE with a JSON-ready str `counts` (already compressed: as is)."""
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        counts = counts_to_string(counts)
    return {"size": [int(s) for s in rle["size"]], "counts": counts}


def decompress_rle(rle: dict) -> dict:
    """COCO compressed RLE -> uncompressed RLE with list `counts` (already uncompressed: as is)."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = counts_from_string(counts).tolist()
    return {"size": [int(s) for s in rle["size"]], "counts": list(counts)}


def counts_to_string(counts: Sequence[int]) -> str:
    """RLE counts -> COCO's string (pycocotools `rleToString`), vectorised over the counts: each
    value, from the fourth on taken as the difference from the count two before, is written as
    little-endian 5-bit groups (bit 0x20 marks "more follows", 0x10 of the last is the sign) + 48."""
    counts = np.asarray(counts, dtype=np.int64)
    values = counts.copy()
    values[3:] -= counts[1:-2]
    n = len(values)
    groups, active = [], np.ones(n, dtype=bool)
    for _ in range(13):  # 13 groups of 5 bits hold any int64
        if not active.any():
            break
        c = values & 0x1F
        values = values >> 5  # arithmetic shift: negative values run to -1
        more = np.where(c & 0x10, values != -1, values != 0)
        char = c | (more.astype(np.int64) << 5)
        groups.append(np.where(active, char + 48, 0))
        active = active & more
    table = np.stack(groups, axis=1) if groups else np.zeros((0, 1), np.int64)
    return table[table > 0].astype(np.uint8).tobytes().decode("ascii")  # row-major: value by value


def counts_from_string(s: str | bytes) -> np.ndarray:
    """COCO's RLE string -> counts (pycocotools `rleFrString`), vectorised."""
    raw = np.frombuffer(s.encode("ascii") if isinstance(s, str) else bytes(s), dtype=np.uint8).astype(np.int64) - 48
    if raw.size == 0:
        return np.zeros(0, np.int64)
    last = (raw & 0x20) == 0  # the last group of each value
    value_id = np.concatenate([[0], np.cumsum(last)[:-1]])
    first = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    group = np.arange(raw.size) - first[value_id]  # position of the group within its value
    values = np.add.reduceat((raw & 0x1F) << (5 * group), first)
    sign = (raw[last] & 0x10) != 0
    n_groups = group[last] + 1
    values = np.where(sign, values | (np.int64(-1) << (5 * n_groups)), values)
    # Undo the differences: counts[i] = values[i] + counts[i - 2] for i >= 3.
    evens, odds = values[0::2].copy(), values[1::2].copy()
    evens[1:] = np.cumsum(evens[1:])
    odds = np.cumsum(odds)
    counts = np.empty_like(values)
    counts[0::2], counts[1::2] = evens, odds
    return counts


def rle_area(rle: dict) -> int:
    counts = rle["counts"]
    counts = counts_from_string(counts) if isinstance(counts, (str, bytes)) else np.asarray(counts, np.int64)
    return int(counts[1::2].sum())


def rle_to_bbox(rle: dict) -> list[float]:
    """COCO box [x, y, w, h] around the set pixels, as `pycocotools.mask.toBbox` (w and h count
    pixels: a single pixel is 1x1). [0, 0, 0, 0] for an empty mask."""
    h = int(rle["size"][0])
    counts = rle["counts"]
    counts = counts_from_string(counts) if isinstance(counts, (str, bytes)) else np.asarray(counts, np.int64)
    m = (len(counts) // 2) * 2
    if m == 0:
        return [0.0, 0.0, 0.0, 0.0]
    ends = np.cumsum(counts[:m])
    starts, lasts = ends[0::2], ends[1::2] - 1  # first and last pixel of every run of ones
    xs, ys = starts // h, starts % h
    xe, ye = lasts // h, lasts % h
    if (xe > xs).any():  # a run that wraps into the next column covers every row
        y0, y1 = 0, h - 1
    else:
        y0, y1 = int(min(ys.min(), ye.min())), int(max(ys.max(), ye.max()))
    x0, x1 = int(xs.min()), int(xe.max())
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def encode_masks(masks: np.ndarray) -> list[dict]:
    """NxHxW boolean masks -> N compressed RLE dicts with `counts` as a str (JSON-ready)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be NxHxW, got shape {masks.shape}")
    return [compress_rle(encode_rle(m)) for m in masks]


def decode_masks(rles: Sequence[dict], size: tuple[int, int] | None = None) -> np.ndarray:
    """N RLE dicts (compressed or uncompressed counts) -> NxHxW bool."""
    if len(rles) == 0:
        if size is None:
            raise ValueError("decoding zero masks needs the image size")
        return np.zeros((0, *size), dtype=bool)
    return np.stack([decode_rle(r) for r in rles])


def normalize_rle(rle: Any) -> dict:
    """Any RLE dict (str, bytes or list counts) -> the compressed form with str counts."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"a mask RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}")
    return compress_rle(dict(rle))


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """Pixel count of each RLE mask, without decoding it."""
    return np.array([rle_area(r) for r in rles], dtype=np.int64)


def rle_boxes_xyxy(rles: Sequence[dict]) -> np.ndarray:
    """Tight boxes (x0, y0, x1, y1; x1/y1 exclusive) of RLE masks; an empty mask gives zeros."""
    xywh = np.array([rle_to_bbox(r) for r in rles], dtype=np.float32).reshape(-1, 4)
    xywh[:, 2:] += xywh[:, :2]
    return xywh

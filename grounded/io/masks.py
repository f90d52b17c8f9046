"""Instance masks on disk: RLE (pycocotools-compatible), COCO records, PNG masks, polygons.

RLE is the lossless format. The uncompressed form is pycocotools': `{"size": [h, w], "counts":
[...]}`, runs over the pixels in column-major order, alternating and starting with zeros. The
compressed form has `counts` as COCO's ASCII string (each count stored as the difference from the
count two before it, in 5-bit groups); `compress_rle` / `decompress_rle` convert between them
without pycocotools, byte for byte as `pycocotools.mask` does.

`write_masks(records, image, out_dir, formats=("coco",))` writes the automatic mask generator's
records (or plain masks) as COCO JSON, PNG files or polygon JSON and returns the paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

FORMATS = ("coco", "png", "polygons", "overlay")

# ---- RLE ---------------------------------------------------------------------------------------


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


# ---- records -----------------------------------------------------------------------------------


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


def coco_annotations(records: Iterable, image_id: int = 1, category_id: int = 1, start_id: int = 1) -> list[dict]:
    """COCO annotations (RLE segmentation, area, bbox in COCO's convention, score) for generator
    records or masks. Generator fields (predicted_iou, stability_score, point_coords, crop_box) are kept."""
    annotations = []
    for i, item in enumerate(records):
        rle = record_rle(item)
        ann = {
            "id": start_id + i, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": rle_area(rle), "bbox": rle_to_bbox(rle), "iscrowd": 0,
        }
        if isinstance(item, dict):
            if "predicted_iou" in item:
                ann["score"] = float(item["predicted_iou"])
            for key in ("predicted_iou", "stability_score", "point_coords", "crop_box"):
                if key in item:
                    ann[key] = jsonable(item[key])
        annotations.append(ann)
    return annotations


def coco_document(records: Iterable, file_name: str, height: int, width: int, image_id: int = 1,
                  category: str = "object") -> dict:
    """A COCO dataset dict (images, annotations, categories) for one image's masks."""
    return {
        "info": {"description": "masks written by grounded"},
        "images": [{"id": image_id, "file_name": file_name, "height": int(height), "width": int(width)}],
        "annotations": coco_annotations(records, image_id=image_id),
        "categories": [{"id": 1, "name": category}],
    }


def jsonable(value: Any) -> Any:
    """numpy arrays and scalars (also inside lists) as plain Python values for JSON."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# ---- polygons and PNGs -------------------------------------------------------------------------


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


def _save_png(array: np.ndarray, path: Path) -> Path:
    from .results import atomic_save_image

    return atomic_save_image(path, array)  # uint16 arrays become 16-bit greyscale


# ---- writer for the CLI ------------------------------------------------------------------------


def write_masks(records: Iterable, image: Any, out_dir: str | os.PathLike, formats: Sequence[str] = ("coco",),
                stem: str | None = None, file_name: str | None = None) -> list[Path]:
    """Write masks (generator records in any output_mode, RLE dicts, or HxW masks) of one image.

    formats: "coco" -> STEM.coco.json (COCO, RLE segmentations: lossless); "png" -> STEM_masks/
    STEM_0000.png ... (0/255, one per instance, in record order) and STEM_labels.png (label map,
    see `label_map`); "polygons" -> STEM.polygons.json (outer contours, per instance "has_holes");
    "overlay" -> STEM_overlay.png. `image` is an HxWx3 array or a path (a path's name gives the
    default stem and file_name). `file_name` is the image's name in the COCO and polygon files
    (default: the path's name, else STEM.png). Files are written atomically. Returns the written paths.
    """
    from .results import atomic_write_text

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown mask format(s) {unknown}; choose from {list(FORMATS)}")
    items = list(records)
    is_path = isinstance(image, (str, os.PathLike))
    stem = stem or (Path(image).stem if is_path else "image")
    file_name = file_name or (Path(image).name if is_path else f"{stem}.png")
    pixels = None
    if "overlay" in formats or not items:
        from .image import load_image

        pixels = load_image(image)
    height, width = record_mask(items[0]).shape if items else pixels.shape[:2]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "coco" in formats:
        written.append(atomic_write_text(out / f"{stem}.coco.json", json.dumps(coco_document(items, file_name, height, width))))
    if "png" in formats:
        folder = out / f"{stem}_masks"
        folder.mkdir(exist_ok=True)
        for i, item in enumerate(items):
            written.append(_save_png(record_mask(item).astype(np.uint8) * 255, folder / f"{stem}_{i:04d}.png"))
        written.append(_save_png(label_map(items, (height, width)), out / f"{stem}_labels.png"))
    if "polygons" in formats:
        instances = []
        for i, item in enumerate(items):
            polygons, has_holes = mask_to_polygons(record_mask(item))
            entry = {"id": i + 1, "polygons": polygons, "has_holes": has_holes}
            if isinstance(item, dict) and "predicted_iou" in item:
                entry["score"] = float(item["predicted_iou"])
            instances.append(entry)
        doc = {"image": file_name, "height": int(height), "width": int(width),
               "note": "outer contours only: instances with has_holes lose their holes; the COCO RLE is lossless",
               "instances": instances}
        written.append(atomic_write_text(out / f"{stem}.polygons.json", json.dumps(doc)))
    if "overlay" in formats:
        from .overlay import overlay

        written.append(_save_png(overlay(pixels, items), out / f"{stem}_overlay.png"))
    return written

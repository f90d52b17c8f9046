"""YOLO segmentation labels from `Detections`, as pure functions (no files): one line per object,
`class x0 y0 x1 y1 ...` with the polygon normalised to [0, 1], and the dataset's `data.yaml`.
Class indices come from the table of `categories.py` (index = COCO id - 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from ...detections import Detections
from ..masks import mask_to_polygons
from .categories import CategoryTable, category_name


def yolo_polygon(mask: np.ndarray) -> List[float]:
    """The mask's largest outer contour as [x0, y0, x1, y1, ...] in pixels (a YOLO segmentation line
    holds one polygon per object); empty when the mask is too thin for a polygon."""
    polygons, _ = mask_to_polygons(mask)
    if not polygons:
        return []
    return max(polygons, key=lambda p: _polygon_area(np.asarray(p).reshape(-1, 2)))


def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _box_polygon(box) -> List[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def yolo_objects(dets: Detections, height: int, width: int) -> List[Dict[str, Any]]:
    """Each detection's label, class id and polygon (normalised, clipped to the image): its mask's
    outline, or its box when it has no mask or one too thin to outline."""
    objects = []
    for i in range(len(dets)):
        polygon = yolo_polygon(dets.mask_of(i)) if dets.has_masks else []
        if len(polygon) < 6:
            polygon = _box_polygon(dets.xyxy[i])
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) / [width, height]
        objects.append({"label": dets.labels[i] if dets.labels is not None else None,
                        "class_id": int(dets.class_id[i]) if dets.class_id is not None else None,
                        "polygon": np.round(np.clip(xy, 0, 1), 6).ravel().tolist()})
    return objects


def object_category(obj: Dict[str, Any], given: Optional[Sequence[str]] = None) -> str:
    return category_name(obj.get("label"), obj.get("class_id"), given)


def yolo_lines(objects: Iterable[Dict[str, Any]], table: CategoryTable,
               given: Optional[Sequence[str]] = None) -> List[str]:
    """The label file's lines for `yolo_objects` output (names the table lacks are added)."""
    return [" ".join([str(table.add(object_category(obj, given)))] + [f"{v:.6f}" for v in obj["polygon"]])
            for obj in objects]


def data_yaml(folder: Path, names: Sequence[str], with_images: bool) -> str:
    """The dataset file: path, train/val image folders (when the images are written), nc and names."""
    lines = ["# YOLO segmentation dataset written by grounded (write_yolo)",
             f"path: {json.dumps(str(Path(folder).resolve()))}"]
    if with_images:
        lines += ["train: images", "val: images"]
    lines.append(f"nc: {len(names)}")
    lines.append("names:")
    lines += [f"  {i}: {json.dumps(name)}" for i, name in enumerate(names)]
    return "\n".join(lines) + "\n"

"""More writer nodes for labelled data: YOLO segmentation labels (with data.yaml) and one JSON
file per image.

Like `write_coco`, `write_yolo` writes each item's polygons atomically as it goes and assembles
the run-level files (labels/*.txt with class indices, data.yaml) at the end of every run from the
items the journal lists as finished: the class list depends on every image's labels, so the
indices can only be fixed once the run has seen them all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from ..io.results import atomic_save_image, atomic_write_json, atomic_write_text
from ..pipeline.node import Param
from ..types import Sample
from .export import FileWriter, _item_path, _require_id


def yolo_polygon(mask: np.ndarray) -> List[float]:
    """The mask's largest outer contour as [x0, y0, x1, y1, ...] in pixels (a YOLO segmentation line
    holds one polygon per object); empty when the mask is too thin for a polygon."""
    from ..io.masks import mask_to_polygons

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


class WriteYolo(FileWriter):
    """YOLO segmentation labels (class x y x y ..., normalised) per image, plus data.yaml and the images."""

    name = "write_yolo"
    params = {
        "dir": Param("yolo", str, "folder in the output folder (images/, labels/, data.yaml)"),
        "names": Param(None, list, "class names for indices 0, 1, ... (default: the detections' labels and the "
                                   "images' tags, sorted; else one class 'object')"),
        "images": Param("copy", str, "copy: write each (upright) image beside its labels as PNG; none: labels only",
                        choices=("copy", "none")),
    }

    def process(self, sample: Sample) -> None:
        image_id = _require_id(self, sample)
        dets = sample.detections
        height, width = sample.image_size
        objects = []
        for i in range(len(dets)):
            polygon = yolo_polygon(dets.mask_of(i)) if dets.has_masks else []
            if len(polygon) < 6:  # no mask, or one too thin to outline: its box stands in
                polygon = _box_polygon(dets.xyxy[i])
            xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) / [width, height]
            objects.append({"label": dets.labels[i] if dets.labels is not None else None,
                            "polygon": np.round(np.clip(xy, 0, 1), 6).ravel().tolist()})
        folder = self.out / self.dir
        if self.images == "copy":
            atomic_save_image(folder / "images" / f"{image_id}.png", sample.image)
        path = atomic_write_json(_item_path(folder / "items", image_id, ".json"),
                                 {"objects": objects, "tags": list(sample.tags or [])})
        self._record(sample, path)

    def finish(self, ctx) -> None:
        folder = self.out / self.dir
        docs = [(row["id"], doc) for row, doc in self._finished_docs(ctx, "out")]
        names = list(self.names) if self.names else sorted(
            {o["label"] for _, d in docs for o in d["objects"] if o["label"] is not None}
            | {t for _, d in docs for t in d.get("tags", [])})
        if not names or any(o["label"] is None for _, d in docs for o in d["objects"]):
            names.append("object")  # detections without a label (automatic masks) get a class of their own
        index = {n: i for i, n in enumerate(names)}
        dropped = 0
        for image_id, doc in docs:
            lines = []
            for obj in doc["objects"]:
                label = obj["label"] if obj["label"] is not None else "object"
                if label not in index:  # a label outside the given names
                    dropped += 1
                    continue
                lines.append(" ".join([str(index[label])] + [f"{v:.6f}" for v in obj["polygon"]]))
            atomic_write_text(folder / "labels" / f"{image_id}.txt", "".join(line + "\n" for line in lines))
        atomic_write_text(folder / "data.yaml", _data_yaml(folder, names, self.images == "copy"))
        if dropped:
            ctx.log(f"{self.id}: {dropped} objects had labels outside `names` and were left out")
        ctx.log(f"{self.id}: {len(docs)} images, {len(names)} classes -> {folder / 'data.yaml'}")


def _data_yaml(folder: Path, names: List[str], with_images: bool) -> str:
    lines = ["# YOLO segmentation dataset written by grounded (write_yolo)",
             f"path: {json.dumps(str(folder.resolve()))}"]
    if with_images:
        lines += ["train: images", "val: images"]
    lines.append(f"nc: {len(names)}")
    lines.append("names:")
    lines += [f"  {i}: {json.dumps(name)}" for i, name in enumerate(names)]
    return "\n".join(lines) + "\n"


class WriteJson(FileWriter):
    """One JSON file per image: its size, caption, tags, text and every detection (box, label, score, RLE mask)."""

    name = "write_json"
    params = {"dir": Param("json", str, "folder in the output folder")}

    def process(self, sample: Sample) -> None:
        image_id = _require_id(self, sample)
        height, width = sample.image_size
        doc: Dict[str, Any] = {"image_id": image_id, "file_name": sample.image_path or image_id,
                               "height": height, "width": width}
        for name in ("caption", "tags", "text", "transcript", "instruction"):
            if sample.get(name) is not None:
                doc[name] = sample.get(name)
        doc["detections"] = [_detection_record(ann) for ann in sample.detections.to_coco(image_id=0)]
        path = atomic_write_json(_item_path(self.out / self.dir, image_id, ".json"), doc)
        self._record(sample, path)


def _detection_record(ann: Dict[str, Any]) -> Dict[str, Any]:
    x, y, w, h = ann["bbox"]
    record: Dict[str, Any] = {"box_xyxy": [x, y, x + w, y + h]}
    for key in ("label", "score", "area", "segmentation"):
        if key in ann:
            record[key] = ann[key]
    extra = {k: v for k, v in ann.items() if k not in ("id", "image_id", "category_id", "bbox", "iscrowd", "label",
                                                        "score", "area", "segmentation")}
    record.update(extra)
    return record

"""Writer nodes: the end of a pipeline that runs over data. Each writes its files for an item
atomically, named by the item's id, and records them in `sample.outputs` (hence the run's
manifest). Writing the same item again (a resumed run redoing an unfinished item) replaces its
files, so nothing is ever duplicated.

`write_coco` also keeps one COCO file for the whole run: at the end of every run (and resume) it
is assembled from the per-item files of the items the journal lists as finished, so it holds
each finished image exactly once, whatever happened before. What goes into each file is
`grounded.io.formats`; these nodes only name and write the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ..io.formats import image_document, merge_documents, polygon_record
from ..io.results import atomic_save_image, atomic_write_json
from ..pipeline.node import Node, Param
from ..types import Detections, Sample


def item_path(folder: Path, image_id: str, suffix: str) -> Path:
    return folder / f"{image_id}{suffix}"


def require_id(node: Node, sample: Sample) -> str:
    if not sample.image_id:
        raise ValueError(f"{node.id} names its files by image_id, and this item has none")
    return sample.image_id


class FileWriter(Node):
    """What the writer nodes share: they read an item's image and detections, write its files in
    the run's output folder, and record them in `sample.outputs` (relative to that folder)."""

    reads = {"image": np.ndarray, "detections": Detections}
    writes: Dict[str, Any] = {}

    def setup(self, ctx) -> None:
        self.out = ctx.require_out_dir(self)

    def _record(self, sample: Sample, path: Path, suffix: str = "") -> None:
        sample.outputs[self.id] = path.relative_to(self.out).as_posix() + suffix

    def _finished_docs(self, ctx, left_out: str) -> List[Tuple[Dict[str, Any], Any]]:
        """(journal row, JSON doc) of each finished item whose file this node wrote; one it cannot
        read is left out (with a line in the log saying so: "left SOURCE `left_out`: cannot read ...")."""
        docs = []
        for row in ctx.finished():
            rel = row.get("outputs", {}).get(self.id)
            if rel is None:
                continue
            try:
                docs.append((row, json.loads((self.out / rel).read_text())))
            except (OSError, ValueError) as err:
                ctx.log(f"{self.id}: left {row['source']} {left_out}: cannot read {rel} ({err})")
        return docs


class WriteCoco(FileWriter):
    """COCO JSON with RLE masks: one COCO document per item, and one for the run assembled from them."""

    name = "write_coco"
    params = {
        "file": Param("coco.json", str, "the run's COCO file, in the output folder"),
        "items_dir": Param("coco", str, "folder of the per-item COCO files (each a complete COCO document with its "
                                        "own category ids) the run's file is assembled from"),
        "categories": Param(None, list, "category names for ids 1, 2, ... (default: the detections' labels and the "
                                        "images' tags, sorted, else one category 'object')"),
    }

    def process(self, sample: Sample) -> None:
        image_id = require_id(self, sample)
        height, width = sample.image_size
        fields = {"item_id": image_id}
        if sample.caption:  # auto-labelling: the caption stays on its image record
            fields["caption"] = sample.caption
        doc = image_document(sample.detections, sample.image_path or image_id, height, width, given=self.categories,
                             tags=sample.tags or (), image_fields=fields)
        path = item_path(self.out / self.items_dir, image_id, ".json")
        atomic_write_json(path, doc)
        self._record(sample, path)

    def finish(self, ctx) -> None:
        docs = [doc for _, doc in self._finished_docs(ctx, f"out of {self.file}")]
        coco, table = merge_documents(docs, self.categories, info={"description": "written by grounded (write_coco)",
                                                                   "images": len(docs)})
        atomic_write_json(self.out / self.file, coco)
        if table.added and self.categories:
            ctx.log(f"{self.id}: labels beyond `categories` became categories too: {', '.join(table.added)}")
        ctx.log(f"{self.id}: {len(coco['annotations'])} annotations on {len(docs)} images -> {self.out / self.file}")


class WriteOverlays(FileWriter):
    """PNG of each image with its masks (and boxes) drawn over it."""

    name = "write_overlays"
    params = {
        "dir": Param("overlays", str, "folder in the output folder"),
        "alpha": Param(0.45, float, "opacity of the mask fill"),
        "boxes": Param(None, bool, "draw boxes (default: only when there are no masks)"),
        "labels": Param(True, bool, "write each detection's label by its box, when boxes are drawn"),
    }

    def process(self, sample: Sample) -> None:
        from ..io.overlay import instance_colors, overlay

        image_id = require_id(self, sample)
        dets = sample.detections
        colors = instance_colors(len(dets))
        picture = overlay(sample.image, dets.rles, alpha=self.alpha, colors=colors) if dets.has_masks else sample.image.copy()
        draw_boxes = self.boxes if self.boxes is not None else not dets.has_masks
        if draw_boxes and len(dets):
            picture = _draw_boxes(picture, dets, colors, self.labels)
        path = atomic_save_image(item_path(self.out / self.dir, image_id, ".png"), picture)
        self._record(sample, path)


def _draw_boxes(picture: np.ndarray, dets: Detections, colors: np.ndarray, labels: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(picture)
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 400))
    for i, (x0, y0, x1, y1) in enumerate(dets.xyxy.tolist()):
        color = tuple(int(c) for c in colors[i])
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=width)
        if labels and (dets.labels is not None or dets.scores is not None):
            text = " ".join(t for t in (dets.labels[i] if dets.labels is not None else "",
                                        f"{dets.scores[i]:.2f}" if dets.scores is not None else "") if t)
            draw.text((x0 + 2, y0 + 1), text, fill=color)
    return np.asarray(img)


class WriteMasks(FileWriter):
    """PNG masks per item: a label map (0 background, i + 1 for detection i), or one 0/255 PNG per mask."""

    name = "write_masks"
    params = {
        "dir": Param("masks", str, "folder in the output folder"),
        "style": Param("label", str, "label: ID.png, one label map per image (8-bit up to 255 masks, else 16-bit); "
                                     "binary: ID/0000.png ... one per mask", choices=("label", "binary")),
    }

    def process(self, sample: Sample) -> None:
        from ..io.masks import label_map

        image_id = require_id(self, sample)
        dets = sample.detections
        if not dets.has_masks:
            raise ValueError(f"{self.id} needs masks, and these detections have only boxes (add segment_boxes before it)")
        folder = self.out / self.dir
        if self.style == "label":
            path = atomic_save_image(item_path(folder, image_id, ".png"), label_map(dets.rles, sample.image_size))
            self._record(sample, path)
            return
        item_folder = folder / image_id
        if item_folder.exists():  # an unfinished earlier attempt: start the item's folder afresh
            shutil.rmtree(item_folder)
        for i in range(len(dets)):
            atomic_save_image(item_folder / f"{i:04d}.png", dets.mask_of(i).astype(np.uint8) * 255)
        item_folder.mkdir(parents=True, exist_ok=True)
        self._record(sample, item_folder, "/")


class WritePolygons(FileWriter):
    """JSON per item: each mask's outer contours as COCO polygons, and whether it has holes."""

    name = "write_polygons"
    params = {"dir": Param("polygons", str, "folder in the output folder")}

    def process(self, sample: Sample) -> None:
        image_id = require_id(self, sample)
        if not sample.detections.has_masks:
            raise ValueError(f"{self.id} needs masks, and these detections have only boxes (add segment_boxes before it)")
        height, width = sample.image_size
        doc = polygon_record(sample.image_path or image_id, height, width, sample.detections)
        path = atomic_write_json(item_path(self.out / self.dir, image_id, ".json"), doc)
        self._record(sample, path)

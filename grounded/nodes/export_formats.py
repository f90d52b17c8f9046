"""More writer nodes for labelled data: YOLO segmentation labels (with data.yaml) and one JSON
file per image.

Like `write_coco`, `write_yolo` writes each item's polygons atomically as it goes and assembles
the run-level files (labels/*.txt with class indices, data.yaml) at the end of every run from the
items the journal lists as finished: the class list depends on every image's labels, so the
indices can only be fixed once the run has seen them all.
"""

from __future__ import annotations

from ..io.formats import CategoryTable, data_yaml, image_record, yolo_lines, yolo_objects
from ..io.formats.yolo import object_category
from ..io.results import atomic_save_image, atomic_write_json, atomic_write_text
from ..pipeline.node import Param
from ..types import Sample
from .export import FileWriter, item_path, require_id


class WriteYolo(FileWriter):
    """YOLO segmentation labels (class x y x y ..., normalised) per image, plus data.yaml and the images."""

    name = "write_yolo"
    params = {
        "dir": Param("yolo", str, "folder in the output folder (images/, labels/, data.yaml)"),
        "names": Param(None, list, "class names for indices 0, 1, ... (default: the detections' labels and the "
                                   "images' tags, sorted; else one class 'object'); labels beyond them are added"),
        "images": Param("copy", str, "copy: write each (upright) image beside its labels as PNG; none: labels only",
                        choices=("copy", "none")),
    }

    def process(self, sample: Sample) -> None:
        image_id = require_id(self, sample)
        height, width = sample.image_size
        folder = self.out / self.dir
        if self.images == "copy":
            atomic_save_image(folder / "images" / f"{image_id}.png", sample.image)
        path = atomic_write_json(item_path(folder / "items", image_id, ".json"),
                                 {"objects": yolo_objects(sample.detections, height, width),
                                  "tags": list(sample.tags or [])})
        self._record(sample, path)

    def finish(self, ctx) -> None:
        folder = self.out / self.dir
        docs = [(row["id"], doc) for row, doc in self._finished_docs(ctx, "out")]
        given = list(self.names) if self.names else None
        found = [object_category(o, given) for _, d in docs for o in d["objects"]]
        if not given:
            found += [t for _, d in docs for t in d.get("tags", [])]
        table = CategoryTable.build(found, given)
        for image_id, doc in docs:
            lines = yolo_lines(doc["objects"], table, given)
            atomic_write_text(folder / "labels" / f"{image_id}.txt", "".join(line + "\n" for line in lines))
        atomic_write_text(folder / "data.yaml", data_yaml(folder, table.names, self.images == "copy"))
        if table.added and given:
            ctx.log(f"{self.id}: labels beyond `names` became classes too: {', '.join(table.added)}")
        ctx.log(f"{self.id}: {len(docs)} images, {len(table)} classes -> {folder / 'data.yaml'}")


class WriteJson(FileWriter):
    """One JSON file per image: its size, caption, tags, text and every detection (box, label, score, RLE mask)."""

    name = "write_json"
    params = {"dir": Param("json", str, "folder in the output folder")}

    def process(self, sample: Sample) -> None:
        image_id = require_id(self, sample)
        height, width = sample.image_size
        texts = {name: sample.get(name) for name in ("caption", "tags", "text", "transcript", "instruction")}
        doc = image_record(image_id, sample.image_path or image_id, height, width, sample.detections, texts)
        path = atomic_write_json(item_path(self.out / self.dir, image_id, ".json"), doc)
        self._record(sample, path)

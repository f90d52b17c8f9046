"""COCO instance segmentation from `Detections`, as pure functions (no files).

`bbox` and `area` describe the mask, as pycocotools' `toBbox` and `area` give them for the
annotation's own RLE; the detection's own box (a detector's, which may run past the image or
differ from the mask) is kept beside it as `box_xyxy`. Without masks, `bbox` is the box clipped to
the image. Categories come from the one table of `categories.py`.

- `coco_annotations(dets, ...)`: one image's annotations.
- `image_document(dets, ...)`: one image as a complete COCO document (its own categories).
- `merge_documents(docs, ...)`: image documents as one COCO document, with one category table.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...detections import Detections
from ...rle import rle_area, rle_to_bbox
from .categories import CategoryTable, category_name

INFO = {"description": "written by grounded"}


def jsonable(value: Any) -> Any:
    """numpy arrays and scalars (also inside lists) as plain Python values for JSON."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def category_names(dets: Detections, given: Optional[Sequence[str]] = None) -> List[str]:
    """Each detection's category name (`categories.category_name`)."""
    return [category_name(None if dets.labels is None else dets.labels[i],
                          None if dets.class_id is None else int(dets.class_id[i]), given) for i in range(len(dets))]


def box_bbox_area(xyxy: Sequence[float], height: Optional[int] = None, width: Optional[int] = None) -> tuple:
    """COCO [x, y, w, h] and area of a box, clipped to the image when its size is given."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    if height is not None and width is not None:
        x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
        y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
    return [x0, y0, w, h], w * h


def coco_annotations(dets: Detections, image_id: int = 1, categories: Optional[CategoryTable] = None,
                     given: Optional[Sequence[str]] = None, start_id: int = 1) -> List[Dict[str, Any]]:
    """COCO annotations of one image's detections (ids from `start_id`). `categories` is the table
    to number them by (names it lacks are added); without it, one is built from these detections."""
    names = category_names(dets, given)
    table = categories if categories is not None else CategoryTable.build(names, given)
    height, width = dets.image_size if dets.image_size is not None else (None, None)
    annotations = []
    for i, name in enumerate(names):
        ann: Dict[str, Any] = {"id": start_id + i, "image_id": image_id, "category_id": table.coco_id(name)}
        if dets.has_masks:
            rle = dets.rles[i]
            ann.update(segmentation=dict(rle), area=rle_area(rle), bbox=rle_to_bbox(rle),
                       box_xyxy=[float(v) for v in dets.xyxy[i]])
        else:
            ann["bbox"], ann["area"] = box_bbox_area(dets.xyxy[i], height, width)
        ann["iscrowd"] = 0
        if dets.scores is not None:
            ann["score"] = float(dets.scores[i])
        if dets.labels is not None:
            ann["label"] = dets.labels[i]
        if dets.class_id is not None:
            ann["class_id"] = int(dets.class_id[i])
        for key, values in dets.data.items():
            ann[key] = jsonable(values[i])
        annotations.append(ann)
    return annotations


def coco_document(images: List[Dict[str, Any]], annotations: List[Dict[str, Any]], categories: CategoryTable,
                  info: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The COCO dataset dict: info, images, annotations, categories."""
    return {"info": dict(info or INFO), "images": images, "annotations": annotations, "categories": categories.coco()}


def image_document(dets: Detections, file_name: str, height: int, width: int, *, image_id: int = 1,
                   given: Optional[Sequence[str]] = None, tags: Sequence[str] = (),
                   image_fields: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """One image and its detections as a complete COCO document. Its categories are its own (its
    detections' names, and its `tags` when no names are `given`); `tags` are also kept as a
    top-level key, so `merge_documents` can make categories of them."""
    found = category_names(dets, given) + ([] if given else [str(t) for t in tags])
    table = CategoryTable.build(found, given)
    image = {"id": image_id, "file_name": str(file_name), "height": int(height), "width": int(width),
             **dict(image_fields or {})}
    doc = coco_document([image], coco_annotations(dets, image_id, table, given), table)
    if tags:
        doc["tags"] = [str(t) for t in tags]
    return doc


def merge_documents(docs: Iterable[Mapping[str, Any]], given: Optional[Sequence[str]] = None,
                    info: Optional[Mapping[str, Any]] = None) -> Tuple[Dict[str, Any], CategoryTable]:
    """COCO documents (one image each, as `image_document` makes them) as one, and its category
    table: images and annotations numbered from 1, every category id from one table of the names
    the annotations use (and the documents' tags when no names are `given`); `table.added` lists
    the names beyond `given`."""
    docs = list(docs)
    found: List[str] = []
    for doc in docs:
        name_of = {c["id"]: c["name"] for c in doc.get("categories", [])}
        found += [name_of[a["category_id"]] for a in doc["annotations"]]
        if not given:
            found += list(doc.get("tags") or ())
    table = CategoryTable.build(found, given)
    images, annotations = [], []
    for number, doc in enumerate(docs, start=1):
        name_of = {c["id"]: c["name"] for c in doc.get("categories", [])}
        if len(doc["images"]) != 1:
            raise ValueError(f"merge_documents takes one image per document, got {len(doc['images'])}")
        images.append(dict(doc["images"][0], id=number))
        for ann in doc["annotations"]:
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=number,
                                    category_id=table.coco_id(name_of[ann["category_id"]])))
    return coco_document(images, annotations, table, info), table

"""Plain JSON records of one image and its detections, as pure functions (no files): the image's
size, texts (caption, tags, prompt, transcript, instruction) and every detection with its own box
(`box_xyxy`, as the detector or SAM gave it), label, class id, score and, with a mask, the mask's
COCO `bbox` and `area` and its RLE `segmentation`."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from ...detections import Detections
from ...rle import rle_area, rle_to_bbox
from ..masks import mask_to_polygons
from .coco import box_bbox_area, jsonable


def detection_records(dets: Detections) -> List[Dict[str, Any]]:
    records = []
    height, width = dets.image_size if dets.image_size is not None else (None, None)
    for i in range(len(dets)):
        record: Dict[str, Any] = {"box_xyxy": [float(v) for v in dets.xyxy[i]]}
        if dets.labels is not None:
            record["label"] = dets.labels[i]
        if dets.class_id is not None:
            record["class_id"] = int(dets.class_id[i])
        if dets.scores is not None:
            record["score"] = float(dets.scores[i])
        if dets.has_masks:
            rle = dets.rles[i]
            record.update(bbox=rle_to_bbox(rle), area=rle_area(rle), segmentation=dict(rle))
        else:
            record["bbox"], record["area"] = box_bbox_area(dets.xyxy[i], height, width)
        for key, values in dets.data.items():
            record[key] = jsonable(values[i])
        records.append(record)
    return records


def image_record(image_id: str, file_name: str, height: int, width: int, dets: Detections,
                 texts: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """{image_id, file_name, height, width, <texts that are set>, detections: [...]}"""
    doc: Dict[str, Any] = {"image_id": image_id, "file_name": str(file_name), "height": int(height), "width": int(width)}
    doc.update({k: v for k, v in (texts or {}).items() if v is not None})
    doc["detections"] = detection_records(dets)
    return doc


def polygon_record(file_name: str, height: int, width: int, dets: Detections) -> Dict[str, Any]:
    """Each mask's outer contours (COCO polygons, pixel centres) and whether it has holes, which
    outer contours cannot show (the RLE in COCO keeps them)."""
    instances = []
    for i in range(len(dets)):
        polygons, has_holes = mask_to_polygons(dets.mask_of(i))
        entry: Dict[str, Any] = {"id": i + 1, "polygons": polygons, "has_holes": has_holes}
        if dets.labels is not None:
            entry["label"] = dets.labels[i]
        if dets.scores is not None:
            entry["score"] = float(dets.scores[i])
        instances.append(entry)
    return {"image": str(file_name), "height": int(height), "width": int(width),
            "note": "outer contours only: instances with has_holes lose their holes; the COCO RLE is lossless",
            "instances": instances}

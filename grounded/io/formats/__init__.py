"""Labelled-data formats from `Detections`, as pure functions (no files; the writer nodes in
`grounded.nodes.export` write them): COCO (`coco`), YOLO segmentation (`yolo`), plain JSON and
polygon records (`records`), all naming categories through one table (`categories`)."""

from .categories import OBJECT, CategoryTable, category_name
from .coco import coco_annotations, coco_document, image_document, merge_documents
from .records import detection_records, image_record, polygon_record
from .yolo import data_yaml, yolo_lines, yolo_objects, yolo_polygon

__all__ = ["OBJECT", "CategoryTable", "category_name", "coco_annotations", "coco_document", "data_yaml",
           "detection_records", "image_document", "image_record", "merge_documents", "polygon_record", "yolo_lines",
           "yolo_objects", "yolo_polygon"]

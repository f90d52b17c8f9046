"""The built-in pipeline nodes, one module per capability; each is a thin adapter over a library
(`grounded.sam`, `grounded.detect`, `grounded.caption`, ...) and registers the model loaders its
nodes use (`grounded.pipeline.models.register_loader`).

Importing this package registers the short names specs use (`segment_auto`, ...); the node
modules themselves are imported only when a node is looked up. A node of your own plugs in by
its import path (`my_package.my_module:MyNode`), no registration needed.
"""

from __future__ import annotations

import importlib
from typing import Mapping

from ..pipeline.registry import NodeNotFoundError, node_class, node_names, producers_of, register_nodes

BUILTIN_NODES: Mapping[str, str] = {
    "segment_auto": "grounded.nodes.segment:SegmentAuto",
    "detect": "grounded.nodes.detect:Detect",
    "caption": "grounded.nodes.caption:Caption",
    "tags": "grounded.nodes.tags:Tags",
    "segment_boxes": "grounded.nodes.segment:SegmentBoxes",
    "segment_points": "grounded.nodes.segment:SegmentPoints",
    "write_coco": "grounded.nodes.export:WriteCoco",
    "write_overlays": "grounded.nodes.export:WriteOverlays",
    "write_masks": "grounded.nodes.export:WriteMasks",
    "write_polygons": "grounded.nodes.export:WritePolygons",
    "read_audio": "grounded.nodes.speech:ReadAudio",
    "transcribe": "grounded.nodes.speech:Transcribe",
    "parse_edits": "grounded.nodes.instruction:ParseEdits",
    "apply_edits": "grounded.nodes.edit:ApplyEdits",
    "inpaint": "grounded.nodes.edit:Inpaint",
    "target_boxes": "grounded.nodes.edit:TargetBoxes",
    "write_edited": "grounded.nodes.edit:WriteEdited",
    "write_yolo": "grounded.nodes.export_formats:WriteYolo",
    "write_json": "grounded.nodes.export_formats:WriteJson",
    "clip_score": "grounded.nodes.clip:ClipScore",
    "refine_points": "grounded.nodes.text_to_mask:RefinePoints",
    "segment_text_native": "grounded.nodes.text_to_mask:SegmentTextNative",
    "segment_concepts": "grounded.nodes.sam3:SegmentConcepts",
}
register_nodes(BUILTIN_NODES)

__all__ = ["BUILTIN_NODES", "NodeNotFoundError", "node_class", "node_names", "producers_of"]


def __getattr__(attr: str):
    # `from grounded.nodes import SegmentAuto` without importing every node module up front.
    for path in BUILTIN_NODES.values():
        module_name, _, cls_name = path.partition(":")
        if cls_name == attr:
            return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'grounded.nodes' has no attribute {attr!r}")

"""Pipeline nodes, and the registry that lets a spec name them by a short name.

A spec names a built-in node by its short name (`segment_auto`) and a node of your own by its
import path (`my_package.my_module:MyNode`, or `my_package.my_module.MyNode`): any subclass of
`grounded.pipeline.Node` importable from PYTHONPATH plugs in, no registration needed.

The table below is constant; node modules are imported only when a node is looked up.
"""

from __future__ import annotations

import importlib
from typing import List, Mapping, Optional, Type

from ..pipeline.node import Node, did_you_mean

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
    "read_audio": "grounded.nodes.speech:ReadAudio",
    "transcribe": "grounded.nodes.speech:Transcribe",
    "parse_edits": "grounded.nodes.instruction:ParseEdits",
    "apply_edits": "grounded.nodes.edit:ApplyEdits",
    "inpaint": "grounded.nodes.edit:Inpaint",
    "target_boxes": "grounded.nodes.edit:TargetBoxes",
    "write_edited": "grounded.nodes.edit:WriteEdited",
    "write_yolo": "grounded.nodes.export_formats:WriteYolo",
    "write_json": "grounded.nodes.export_formats:WriteJson",
    "detect_tags": "grounded.nodes.detect_tags:DetectTags",
    "clip_score": "grounded.nodes.clip:ClipScore",
    "refine_points": "grounded.nodes.text_to_mask:RefinePoints",
    "segment_text_native": "grounded.nodes.text_to_mask:SegmentTextNative",
}


class NodeNotFoundError(ValueError):
    """A node name that is neither built in nor an importable Node class; `fix` says what to do."""

    def __init__(self, message: str, fix: str):
        self.problem, self.fix = message, fix
        super().__init__(f"{message} ({fix})")


def node_names() -> List[str]:
    return sorted(BUILTIN_NODES)


def node_class(name: str, extra: Optional[Mapping[str, type]] = None) -> Type[Node]:
    """The Node class for a short name (built in, or in `extra`) or an import path."""
    if extra and name in extra:
        return _checked(extra[name], name)
    if name in BUILTIN_NODES:
        return _import(BUILTIN_NODES[name], name)
    if ":" in name or "." in name:
        return _import(name, name)
    known = sorted(set(BUILTIN_NODES) | set(extra or {}))
    raise NodeNotFoundError(
        f"unknown node {name!r}",
        f"{did_you_mean(name, known)}built-in nodes: {', '.join(known)}; or name your own Node class "
        "by import path, e.g. my_package.my_module:MyNode",
    )


def _import(path: str, name: str) -> Type[Node]:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise NodeNotFoundError(f"node {name!r} is not a valid import path", "write it as package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise NodeNotFoundError(f"cannot import {module_name!r} for node {name!r} ({err})",
                                "check the module is on PYTHONPATH (or installed) and imports without errors") from None
    cls = getattr(module, attr, None)
    if cls is None:
        found = [a for a in dir(module) if isinstance(getattr(module, a), type) and issubclass(getattr(module, a), Node)
                 and getattr(module, a) is not Node]
        raise NodeNotFoundError(f"module {module_name!r} has no {attr!r} for node {name!r}",
                                f"{did_you_mean(attr, found)}Node classes there: {', '.join(found) or 'none'}")
    return _checked(cls, name)


def _checked(cls, name: str) -> Type[Node]:
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise NodeNotFoundError(f"{name!r} is {cls!r}, not a Node class",
                                "make it a subclass of grounded.pipeline.Node with reads, writes and params")
    return cls


def producers_of(field: str) -> List[str]:
    """Short names of the built-in nodes that write `field` (for the wiring check's fixes)."""
    return [name for name in sorted(BUILTIN_NODES) if field in node_class(name).writes]


def __getattr__(attr: str):
    # `from grounded.nodes import SegmentAuto` without importing every node module up front.
    for path in BUILTIN_NODES.values():
        module_name, _, cls_name = path.partition(":")
        if cls_name == attr:
            return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'grounded.nodes' has no attribute {attr!r}")

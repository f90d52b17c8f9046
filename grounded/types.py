"""The vocabulary every node speaks: `Sample`, one record flowing through a pipeline, and
`Detections` (in `grounded.detections`), the boxes/masks/scores/labels of one image."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .detections import RLE, Detections  # noqa: F401  (re-exported: part of the vocabulary)


# ---- Sample -----------------------------------------------------------------------------------

@dataclass
class Audio:
    """A mono waveform (float32 in [-1, 1]) and its sample rate."""

    samples: np.ndarray
    sample_rate: int


@dataclass
class Sample:
    """One item flowing through a pipeline. Nodes read and write these fields by name; the
    annotations are what a pipeline's wiring check compares against the types nodes declare.

    Fields a node needs that are not here (its own intermediate results) go in `extra`, reached
    through `get`/`set` like the rest; `meta` holds notes about the item (e.g. how its image was
    converted), and `outputs` the files written for it, by kind."""

    image: Optional[np.ndarray] = None  # HxWx3 uint8 RGB, upright
    image_path: Optional[str] = None  # the source as the user gave it
    image_id: Optional[str] = None  # unique within a run; names the item's output files
    text: Optional[str] = None  # a text prompt (e.g. "a cat . a dog")
    audio: Optional[Audio] = None
    transcript: Optional[str] = None  # speech-to-text of `audio`
    caption: Optional[str] = None
    tags: Optional[List[str]] = None
    instruction: Optional[str] = None  # an edit instruction in words
    edits: Optional[List[Dict[str, Any]]] = None  # the instruction parsed into edit operations
    points: Optional[List[Any]] = None  # point prompts in pixels: a list of prompts, each [x, y] or [[x, y, label], ...]
    detections: Optional[Detections] = None
    edited_image: Optional[np.ndarray] = None  # HxWx3 uint8 RGB
    outputs: Dict[str, str] = field(default_factory=dict)  # kind -> file written for this item (relative to the run folder)
    meta: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_types(cls) -> Dict[str, type]:
        """Field name -> declared type (Optional[...] removed), for the wiring check."""
        hints = typing.get_type_hints(cls)
        return {f.name: strip_optional(hints[f.name]) for f in dataclasses.fields(cls)
                if f.name not in ("outputs", "meta", "extra")}

    def get(self, name: str, default: Any = None) -> Any:
        if name in _SAMPLE_FIELDS:
            value = getattr(self, name)
            return default if value is None else value
        return self.extra.get(name, default)

    def set(self, name: str, value: Any) -> None:
        if name in _SAMPLE_FIELDS:
            setattr(self, name, value)
        else:
            self.extra[name] = value

    def has(self, name: str) -> bool:
        return self.get(name) is not None

    def note(self, text: str) -> None:
        """Record something a person should know about this item (kept in the run's manifest)."""
        self.meta.setdefault("notes", []).append(text)

    @property
    def image_size(self) -> Optional[Tuple[int, int]]:
        return None if self.image is None else (int(self.image.shape[0]), int(self.image.shape[1]))


_SAMPLE_FIELDS = frozenset(f.name for f in dataclasses.fields(Sample))


def strip_optional(tp: Any) -> Any:
    """Optional[X] -> X (other unions are kept)."""
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def type_fits(produced: Any, wanted: Any) -> bool:
    """Whether a value declared as `produced` can be given to a reader that wants `wanted`.

    Any fits everything; Optional is ignored; classes by subclassing; generics by their origin
    and, when both sides give them, their arguments (List[str] fits list and List[str], not
    List[int]); a union wanted accepts any of its members."""
    produced, wanted = strip_optional(produced), strip_optional(wanted)
    if produced is Any or wanted is Any or produced == wanted:
        return True
    if typing.get_origin(wanted) is Union:
        return any(type_fits(produced, w) for w in typing.get_args(wanted))
    if typing.get_origin(produced) is Union:
        return all(type_fits(p, wanted) for p in typing.get_args(produced))
    p_origin, w_origin = typing.get_origin(produced) or produced, typing.get_origin(wanted) or wanted
    if not (isinstance(p_origin, type) and isinstance(w_origin, type) and issubclass(p_origin, w_origin)):
        return False
    p_args, w_args = typing.get_args(produced), typing.get_args(wanted)
    if p_args and w_args and len(p_args) == len(w_args):
        return all(type_fits(p, w) for p, w in zip(p_args, w_args))
    return True


def type_name(tp: Any) -> str:
    """A type in words: "numpy array", "list of str", "Detections"."""
    tp = strip_optional(tp)
    if tp is Any:
        return "anything"
    if isinstance(tp, type) and not typing.get_args(tp):
        return "numpy array" if tp is np.ndarray else tp.__name__
    origin, args = typing.get_origin(tp), [a for a in typing.get_args(tp) if a is not Any]
    if origin is Union:
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if isinstance(origin, type):
        if not args:
            return origin.__name__
        if origin in (list, tuple, set) and len(args) == 1:
            return f"{origin.__name__} of {type_name(args[0])}"
    return str(tp).replace("typing.", "")


def value_fits(value: Any, tp: Any) -> bool:
    """A runtime check of a value against a declared type (the outer class only)."""
    tp = strip_optional(tp)
    if value is None or tp is Any:
        return True
    if typing.get_origin(tp) is Union:
        return any(value_fits(value, t) for t in typing.get_args(tp))
    origin = typing.get_origin(tp) or tp
    if not isinstance(origin, type):
        return True
    if origin is float and isinstance(value, (int, np.integer, np.floating)) and not isinstance(value, bool):
        return True
    return isinstance(value, origin)

"""`detect`: text -> boxes with Grounding DINO (grounded.detect), either backend.

    - node: detect
      model: IDEA-Research/grounding-dino-tiny     # transformers hub id or folder
      prompt: "dog. cat. red car."                  # else each item's `text`

    - node: detect                                  # official checkpoint run by groundingdino-py
      model: weights/groundingdino_swint_ogc.pth
      model_config: weights/GroundingDINO_SwinT_OGC.py
      text_encoder: weights/bert-base-uncased       # a local BERT folder

An item whose text names nothing (auto-labelling: a caption without tags) is an error, or with
`empty_text: none` gets no detections (an image with no labels).

Writes `detections`: boxes in pixels (x0, y0, x1, y1), `scores` (the query's best token
probability), `class_id` (index into the prompt's classes), `labels` (the class names) and
`data["phrase"]` (the prompt tokens above `text_threshold`). Each backend resizes images its own
way (`size`/`max_size`: the transformers image processor, or groundingdino-py's PIL transform);
see `grounded.detect.hf` and `grounded.detect.official`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..detect.phrases import parse_prompt
from ..pipeline.models import DTYPE_CHOICES, register_loader
from ..pipeline.node import Node, Param
from ..types import Detections, Sample

_OFFICIAL = "official:"


def detector_key(model: str, config: Optional[str] = None, text_encoder: Optional[str] = None) -> str:
    """The ModelCache name of a detector: the model itself for transformers, or the three files of
    an official checkpoint (absolute paths) in one string."""
    if config is None:
        if text_encoder is not None:
            raise ValueError("detect: text_encoder is for official checkpoints; set model_config too, or leave it out")
        return str(model)
    parts = [str(Path(p).expanduser().resolve()) if p is not None else None for p in (model, config, text_encoder)]
    return _OFFICIAL + json.dumps(parts)


def _load_grounding_dino(cache, name: str, device: str, dtype):
    from ..detect import load_detector

    if name.startswith(_OFFICIAL):
        checkpoint, config, text_encoder = json.loads(name[len(_OFFICIAL):])
        return load_detector(checkpoint, config, text_encoder, device=device, dtype=dtype)
    return load_detector(name, device=device, dtype=dtype)


register_loader("grounding_dino", _load_grounding_dino)


class Detect(Node):
    """Grounding DINO: boxes for the classes of a text prompt ("dog. cat. red car.")."""

    name = "detect"
    reads = {"image": np.ndarray, "text": str}
    writes = {"detections": Detections}
    params = {
        "model": Param("IDEA-Research/grounding-dino-tiny", str,
                       "transformers hub id or folder; or an official .pth checkpoint (with model_config)"),
        "model_config": Param(None, str, "official .py config (GroundingDINO_SwinT_OGC.py): selects groundingdino-py"),
        "text_encoder": Param(None, str, "local BERT folder for an official checkpoint (bert-base-uncased)"),
        "prompt": Param(None, str, "classes separated by '.', e.g. 'dog. cat. red car.' (else each item's text)"),
        "box_threshold": Param(0.3, float, "keep queries whose best token probability is above this"),
        "text_threshold": Param(0.25, float, "tokens above this form a detection's phrase"),
        "nms": Param(None, float, "box NMS IoU threshold (none: no NMS)"),
        "nms_class_agnostic": Param(True, bool, "NMS across classes (else within each class)"),
        "size": Param(800, int, "resize the shortest image side to this (each backend's own resize)"),
        "max_size": Param(1333, int, "cap on the longest side after resizing"),
        "empty_text": Param("error", str, "an item whose text names nothing (no tags): error, or none (no detections)",
                            choices=("error", "none")),
        "device": Param("auto", str, "cpu, cuda, cuda:1, ... or auto", fingerprint=False),
        "dtype": Param("fp32", str, "precision (bf16/fp16: transformers backend only)", choices=DTYPE_CHOICES),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._key = detector_key(self.model, self.model_config, self.text_encoder)
        if self.prompt is not None:
            parse_prompt(self.prompt)  # a bad prompt fails when the pipeline is built
            self.reads = {"image": np.ndarray}
        for pname in ("box_threshold", "text_threshold"):
            if not 0.0 <= getattr(self, pname) <= 1.0:
                raise ValueError(f"detect: {pname} must be between 0 and 1, got {getattr(self, pname)}")

    def setup(self, ctx) -> None:
        self.detector = ctx.models.get("grounding_dino", self._key, self.device, self.dtype)

    def close(self) -> None:
        self.detector = None

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        texts = [self.prompt if self.prompt is not None else s.text for s in samples]
        prompted = []
        for sample, text in zip(samples, texts):
            if self.empty_text == "none" and not (text or "").strip(" ."):
                sample.detections = Detections.empty(sample.image_size)  # a caption that named nothing: no labels
            elif text is None:
                raise ValueError(f"detect: item {sample.image_id or sample.image_path!r} has no text; give it text "
                                 "or set the node's prompt")
            else:
                prompted.append((sample, text))
        if prompted:
            results = self.detector.detect([s.image for s, _ in prompted], [t for _, t in prompted],
                                           box_threshold=self.box_threshold, text_threshold=self.text_threshold,
                                           nms=self.nms, nms_class_agnostic=self.nms_class_agnostic, size=self.size,
                                           max_size=self.max_size)
            for (sample, _), dets in zip(prompted, results):
                sample.detections = dets
        return samples

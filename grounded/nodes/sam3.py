"""`segment_concepts`: SAM 3 concept segmentation (`grounded.sam3`): every instance of each phrase
(and exemplar boxes) in each image, clicks correcting the results through SAM 3's tracker.

    - node: segment_concepts
      params:
        model: facebook/sam3        # hub id (the local Hugging Face cache offline) or folder
        text: "dog. red car."       # phrases separated by "." (else each item's text, or its tags)
        threshold: 0.5              # score (query x presence) to keep an instance

The images of a batch go through the vision encoder together, each once, and every phrase of every
image reuses its features. Writes `detections`: boxes, RLE masks, `scores`, `labels` (the phrase)
and `class_id` (the phrase's index among the image's phrases). This module registers the model kind
"sam3" (`grounded.sam3.load_sam3`), so one `ModelCache` loads SAM 3 once for every node naming it.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from ..pipeline.models import DTYPE_CHOICES, ModelCache, register_loader
from ..pipeline.node import Node, Param
from ..types import Detections, Sample


def _load_sam3(cache: ModelCache, name: str, device: str, dtype: Any):
    from ..sam3 import load_sam3

    return load_sam3(name, device=device, dtype=dtype)


register_loader("sam3", _load_sam3)


def sam3_model(models: ModelCache, name_or_path: Any, device: Any = "auto", dtype: Any = None):
    """The run's `Sam3` of that name (one per model, device and dtype: its image features are shared)."""
    return models.get("sam3", name_or_path, device, dtype)


def phrases_of(text: str) -> List[str]:
    """"dog. red car." -> ["dog", "red car"] (the classes of a Grounding DINO prompt); a clear error
    for an empty or punctuation-only text."""
    from ..detect.phrases import parse_prompt

    return list(parse_prompt(text).classes)


def exemplar_concepts(phrases: List[str], exemplars: Any) -> list:
    """Each phrase as a `Concept` with the exemplar boxes ([x0, y0, x1, y1] or [x0, y0, x1, y1, label])."""
    from ..sam3 import Concept

    boxes, labels = [], []
    for box in exemplars or []:
        if not isinstance(box, (list, tuple)) or len(box) not in (4, 5):
            raise ValueError(f"an exemplar is [x0, y0, x1, y1] or [x0, y0, x1, y1, label] (1 positive, 0 negative), "
                             f"got {box!r}")
        boxes.append([float(v) for v in box[:4]])
        labels.append(int(box[4]) if len(box) == 5 else 1)
    if not phrases:
        return [Concept(None, boxes, labels)] if boxes else []
    return [Concept(p, boxes, labels) for p in phrases]


class SegmentConcepts(Node):
    """SAM 3: every instance of each phrase (and exemplar boxes) -> detections with masks; clicks correct them."""

    name = "segment_concepts"
    reads = {"image": np.ndarray, "text": str}
    writes = {"detections": Detections}
    params = {
        "model": Param("facebook/sam3", str, "SAM 3: hub id (the local Hugging Face cache offline; the weights are "
                                             "gated) or a folder"),
        "device": Param("auto", str, "cpu, cuda, cuda:1, ... or auto (a GPU when there is one)", fingerprint=False),
        "dtype": Param("fp32", str, "precision of the weights", choices=DTYPE_CHOICES),
        "text": Param(None, str, "phrases for every image, separated by '.' (else each item's text or tags)"),
        "phrases_from": Param("text", str, "where the phrases come from when `text` is not set: the item's text "
                                           "('dog. red car.'), its tags, or none (the exemplars alone)",
                              choices=("text", "tags", "none")),
        "exemplars": Param(None, list, "exemplar boxes in pixels, [[x0, y0, x1, y1], [x0, y0, x1, y1, 0], ...] "
                                       "(label 1 positive, 0 negative), prompted with every phrase"),
        "threshold": Param(0.5, float, "keep instances whose score (query x presence probability) is above this"),
        "mask_threshold": Param(0.5, float, "mask probability above which a pixel is in the mask"),
        "points": Param(None, list, "clicks [[x, y, label], ...] correcting the results (else each item's points)"),
        "prompts_per_call": Param(4, int, "(image, phrase) pairs per decoder call"),
    }

    def __init__(self, **params: Any) -> None:
        from ..prompting import parse_clicks

        super().__init__(**params)
        self._fixed = exemplar_concepts(phrases_of(self.text) if self.text is not None else [], self.exemplars)
        if self.text is None and self.phrases_from == "none" and not self.exemplars:
            raise ValueError(f"{self.id}: phrases_from none prompts the exemplars alone: set exemplars (or text)")
        if self.text is not None or self.phrases_from == "none":
            self.reads = {"image": np.ndarray}
        elif self.phrases_from == "tags":
            self.reads = {"image": np.ndarray, "tags": List[str]}
        parse_clicks(self.points)
        if self.prompts_per_call < 1:
            raise ValueError(f"{self.id}: prompts_per_call must be 1 or more, got {self.prompts_per_call}")

    def setup(self, ctx) -> None:
        self.sam3 = sam3_model(ctx.models, self.model, self.device, self.dtype)

    def close(self) -> None:
        self.sam3 = None

    def _concepts(self, sample: Sample) -> list:
        if self.text is not None or self.phrases_from == "none":
            return self._fixed
        if self.phrases_from == "tags":
            return exemplar_concepts(list(sample.tags or []), self.exemplars)
        if sample.text is None:
            raise ValueError(f"{self.id}: item {sample.image_id or sample.image_path!r} has no text; give it one, "
                             "or set the node's text")
        return exemplar_concepts(phrases_of(sample.text), self.exemplars)

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        from ..sam3 import correct_with_clicks

        prompts = [self._concepts(s) for s in samples]
        # Clicks prompt the tracker on the features the concepts were found with: keep the batch's.
        self.sam3.cache_size = max(self.sam3.cache_size, len(samples))
        found = self.sam3.segment([s.image for s in samples], prompts, threshold=self.threshold,
                                  mask_threshold=self.mask_threshold, batch_size=self.prompts_per_call,
                                  image_batch_size=len(samples))
        for sample, concepts, dets in zip(samples, prompts, found):
            if not concepts:
                sample.note(f"{self.id}: no phrase to look for (no {self.phrases_from}): no detections")
            clicks = self.points if self.points is not None else sample.points
            if clicks and len(dets):
                dets = correct_with_clicks(self.sam3.predictor(), sample.image, dets, clicks)
            sample.detections = dets
        return samples

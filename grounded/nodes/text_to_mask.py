"""Text-to-mask nodes (see `grounded.text_to_mask`; the steps are `grounded.prompting`):

- `refine_points`: the detections' masks corrected by clicks (the node's `points`, else each item's
  `points` when it has them; without clicks the detections pass through unchanged).
- `segment_text_native`: SAM's own text prompt, a CLIP text embedding projected to a sparse prompt
  token by a learned projection (`projection`: a folder written by `grounded train`), plus the
  item's clicks in the same decoder call.
"""

from __future__ import annotations

from typing import List

import numpy as np

from ..pipeline.node import Param
from ..types import Detections, Sample
from .clip import CLIP_PARAMS, clip_key
from .segment import MODEL_PARAMS, _SamNode


class RefinePoints(_SamNode):
    """Correct the detections' masks with clicks: each is prompted again with its box and its clicks."""

    name = "refine_points"
    reads = {"image": np.ndarray, "detections": Detections}
    writes = {"detections": Detections}
    params = {
        **MODEL_PARAMS,
        "points": Param(None, list, "clicks in pixels: [[x, y, label], ...] (label 1 object, 0 background); "
                                    "else each item's points"),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.points is not None:
            from ..prompting import parse_clicks

            parse_clicks(self.points)

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        from ..prompting import refine_with_clicks

        for sample in samples:
            points = self.points if self.points is not None else sample.points
            if points and len(sample.detections):
                if not sample.detections.has_masks:
                    raise ValueError("refine_points: the detections have no masks; put a SAM node before it")
                sample.detections = refine_with_clicks(self.predictor, sample.image, sample.detections, points)
        return samples


class SegmentTextNative(_SamNode):
    """SAM's text prompt: CLIP text embedding -> learned projection -> sparse prompt token -> a mask."""

    name = "segment_text_native"
    reads = {"image": np.ndarray, "text": str}
    writes = {"detections": Detections}
    params = {
        **MODEL_PARAMS,
        "clip": CLIP_PARAMS["model"],
        "clip_pretrained": CLIP_PARAMS["pretrained"],
        "projection": Param(None, str, "text-prompt projection folder (text_prompt.safetensors + text_prompt.json), "
                                       "trained by `grounded train`"),
        "text": Param(None, str, "the text (else each item's text)"),
        "points": Param(None, list, "clicks [[x, y, label], ...] added to the text prompt (else each item's points)"),
    }

    def __init__(self, **params) -> None:
        from ..prompting import NO_PROJECTION

        super().__init__(**params)
        if self.projection is None:
            raise ValueError(f"segment_text_native: {NO_PROJECTION}")
        if self.clip is None:
            raise ValueError("segment_text_native: set clip (the CLIP the projection was trained with)")
        if self.text is not None:
            self.reads = {"image": np.ndarray}

    def setup(self, ctx) -> None:
        from ..prompting import load_projection

        super().setup(ctx)
        self._clip = ctx.models.get("clip", clip_key(self.clip, self.clip_pretrained), self.device)
        self._projection = load_projection(self.projection, str(self.predictor.device))

    def close(self) -> None:
        super().close()
        self._clip = self._projection = None

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        from ..prompting import native_masks

        for sample in samples:
            text = self.text if self.text is not None else sample.text
            if text is None:
                raise ValueError(f"segment_text_native: item {sample.image_id or sample.image_path!r} has no text")
            points = self.points if self.points is not None else sample.points
            sample.detections = native_masks(self.predictor, self._clip, self._projection, sample.image, text, points)
        return samples

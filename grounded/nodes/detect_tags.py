"""`detect_tags`: the `detect` node for auto-labelling, where each image's prompt is its tags and
an image whose caption named nothing has no tags: it gets no detections (an image with no labels),
not an error."""

from __future__ import annotations

from typing import List

from ..types import Detections, Sample
from .detect import Detect


class DetectTags(Detect):
    """Grounding DINO boxes for each image's tags (its text); an image without tags gets no detections."""

    name = "detect_tags"

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        def prompt_of(sample: Sample) -> str:
            return (self.prompt if self.prompt is not None else sample.text) or ""

        prompted = [s for s in samples if prompt_of(s).strip(" .")]
        if prompted:
            super().process_batch(prompted)
        for sample in samples:
            if not prompt_of(sample).strip(" ."):
                sample.detections = Detections.empty(sample.image_size)
        return samples

"""`clip_score`: CLIP similarity of each detection's masked crop to a text (or to its own label),
through open_clip or transformers (`grounded.clip`).

    - node: clip_score
      params:
        model: path/to/open_clip_folder      # or ViT-B-32 with pretrained: <tag or file>, 'hf-hub:org/name',
        text: "a red circle"                  #   a transformers CLIPModel folder or hub id; text: else item's text
        top_k: 1                              # keep the best (none: keep all, best first)

Writes `detections` with `data["clip_score"]` (cosine similarity in [-1, 1]), best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from ..pipeline.models import DTYPE_CHOICES, register_loader
from ..pipeline.node import Node, Param
from ..types import Detections, Sample

CLIP_PARAMS = {
    "model": Param(None, str, "CLIP: open_clip folder / 'hf-hub:org/name' / architecture name (with pretrained), "
                              "or a transformers CLIPModel folder or hub id"),
    "pretrained": Param(None, str, "open_clip pretrained tag or checkpoint file (with an architecture name as model)"),
    "backend": Param("auto", str, "open_clip, transformers or auto (from the model name)",
                     choices=("auto", "open_clip", "transformers")),
    "device": Param("auto", str, "cpu, cuda, cuda:1, ... or auto", fingerprint=False),
    "dtype": Param("fp32", str, "precision", choices=DTYPE_CHOICES),
}
_SEP = "@@"


def clip_key(model: str, pretrained: Optional[str] = None, backend: str = "auto") -> str:
    """The ModelCache name of a CLIP: model, pretrained (absolute if a path) and backend in one string."""
    def absolute(p: Optional[str]) -> Optional[str]:
        if p is None:
            return None
        path = Path(p).expanduser()
        return str(path.resolve()) if path.exists() else p

    key = absolute(model)
    if pretrained or backend != "auto":
        key = f"{key}{_SEP}{absolute(pretrained) or ''}{_SEP}{backend}"
    return key


def _load_clip(cache, name: str, device: str, dtype):
    from ..clip import load_clip

    model, pretrained, backend = name, None, "auto"
    if _SEP in name:
        model, pretrained, backend = name.split(_SEP)
    return load_clip(model, pretrained=pretrained or None, backend=backend, device=device, dtype=dtype)


register_loader("clip", _load_clip)


class ClipScore(Node):
    """CLIP similarity of each detection's masked crop to the text -> detections ranked, best first."""

    name = "clip_score"
    reads = {"image": np.ndarray, "detections": Detections, "text": str}
    writes = {"detections": Detections}
    params = {
        **CLIP_PARAMS,
        "text": Param(None, str, "the text to score against (else each item's text)"),
        "use_labels": Param(False, bool, "score each detection against its own label instead of one text"),
        "top_k": Param(None, int, "keep the best k (none: all, best first)"),
        "min_score": Param(None, float, "drop detections below this similarity"),
        "margin": Param(0.1, float, "widen each crop's box by this fraction on each side"),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if self.model is None:
            raise ValueError("clip_score: set model (an open_clip folder, 'hf-hub:org/name', an architecture name "
                             "with pretrained, or a transformers CLIPModel folder or hub id)")
        if self.text is not None or self.use_labels:
            from ..clip import check_text

            if self.text is not None:
                check_text(self.text, "clip_score text")
            self.reads = {"image": np.ndarray, "detections": Detections}
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"clip_score: top_k must be at least 1, got {self.top_k}")
        self._key = clip_key(self.model, self.pretrained, self.backend)

    def setup(self, ctx) -> None:
        self.clip = ctx.models.get("clip", self._key, self.device, self.dtype)

    def close(self) -> None:
        self.clip = None

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        from ..prompting import rank_by_clip

        for i, sample in enumerate(samples):
            self.report_progress(i, len(samples))  # scoring every mask's crop takes a while
            dets = sample.detections
            if not dets.has_masks:
                raise ValueError("clip_score: the detections have no masks; put a SAM node (segment_boxes, "
                                 "segment_auto) before it")
            if self.use_labels:
                sample.detections = self._score_labels(sample.image, dets)
                continue
            text = self.text if self.text is not None else sample.text
            if text is None:
                raise ValueError(f"clip_score: item {sample.image_id or sample.image_path!r} has no text; give it "
                                 "text or set the node's text")
            sample.detections = rank_by_clip(self.clip, sample.image, dets, text, top_k=self.top_k,
                                             min_score=self.min_score, margin=self.margin)
        return samples

    def _score_labels(self, image: np.ndarray, dets: Detections) -> Detections:
        if not len(dets):
            return dets
        if dets.labels is None:
            raise ValueError("clip_score: use_labels needs detections with labels (e.g. from detect)")
        texts = sorted(set(dets.labels))
        sims = self.clip.score_masks(image, dets.mask, texts, margin=self.margin)
        scores = sims[np.arange(len(dets)), [texts.index(label) for label in dets.labels]]
        order = np.argsort(-scores, kind="stable")
        if self.min_score is not None:
            order = order[scores[order] >= self.min_score]
        if self.top_k is not None:
            order = order[:self.top_k]
        ranked = dets[order]
        return ranked.replace(data=dict(ranked.data, clip_score=scores[order].astype(np.float32)))

"""Caption node: BLIP (`grounded.caption`) captions every image, batched, with beam search and
length settings, optionally continuing a prefix ("a picture of"). The model is loaded once per
run by the `ModelCache` (kind "blip", registered here).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from ..caption import DEFAULT_MODEL, BlipCaptioner, load_blip
from ..pipeline.models import DTYPE_CHOICES, register_loader
from ..pipeline.node import Node, Param
from ..types import Sample


def _load_blip(cache, name: str, device: str, dtype: Any) -> BlipCaptioner:
    """ModelCache loader for kind "blip"."""
    return load_blip(name, device=device, dtype=dtype)


register_loader("blip", _load_blip)


class Caption(Node):
    """Caption each image with BLIP (beam search, batched) -> caption."""

    name = "caption"
    reads = {"image": np.ndarray}
    writes = {"caption": str}
    params = {
        "model": Param(DEFAULT_MODEL, str, "BLIP captioner: Hugging Face hub id or local folder"),
        "device": Param("auto", str, "cpu, cuda, cuda:1, ... or auto (a GPU when there is one)", fingerprint=False),
        "dtype": Param("fp32", str, "precision of the model", choices=DTYPE_CHOICES),
        "prompt": Param("", str, "text the caption continues (conditional captioning), e.g. 'a picture of'; "
                                 "empty for none"),
        "num_beams": Param(3, int, "beam search width (1: greedy)"),
        "max_new_tokens": Param(20, int, "longest caption, in tokens after the prompt"),
        "min_new_tokens": Param(5, int, "shortest caption, in tokens after the prompt"),
        "repetition_penalty": Param(1.0, float, "above 1 discourages repeated words"),
        "batch_size": Param(8, int, "images per generate call", fingerprint=False),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        problems = [f"{p} must be at least {low}, got {getattr(self, p)}"
                    for p, low in (("num_beams", 1), ("max_new_tokens", 1), ("min_new_tokens", 0), ("batch_size", 1))
                    if getattr(self, p) < low]
        if self.min_new_tokens > self.max_new_tokens:
            problems.append(f"min_new_tokens ({self.min_new_tokens}) is above max_new_tokens ({self.max_new_tokens})")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be above 0, got {self.repetition_penalty}")
        if problems:
            raise ValueError(f"{self.id}: " + "; ".join(problems))
        self.captioner: Optional[BlipCaptioner] = None

    def generate_kwargs(self) -> Dict[str, Any]:
        """What the node passes to the model's `generate`."""
        return dict(num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens,
                    repetition_penalty=self.repetition_penalty)

    def setup(self, ctx) -> None:
        self.captioner = ctx.models.get("blip", self.model, self.device, self.dtype)

    def close(self) -> None:
        self.captioner = None

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        captions = self.captioner.caption([s.image for s in samples], prompt=self.prompt.strip() or None,
                                          batch_size=self.batch_size, **self.generate_kwargs())
        for sample, caption in zip(samples, captions):
            sample.caption = caption
        return samples

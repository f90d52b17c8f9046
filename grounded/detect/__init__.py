"""Text -> boxes with Grounding DINO, two backends behind one interface (`Detector.detect`):

- transformers' `GroundingDinoForObjectDetection` (`grounded.detect.hf`): a hub id such as
  `IDEA-Research/grounding-dino-tiny` or a local folder;
- groundingdino-py with an official checkpoint + its `.py` config (`grounded.detect.official`),
  its BERT from a local folder (`text_encoder=`).

`grounded.detect.convert` turns an official checkpoint into a transformers folder
(`grounded convert grounding-dino ...`). Heavy libraries are imported when a detector is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from .base import Detector
from .phrases import Prompt, parse_prompt

__all__ = ["Detector", "Prompt", "load_detector", "parse_prompt"]


def load_detector(model: Union[str, Path], config: Optional[Union[str, Path]] = None,
                  text_encoder: Optional[Union[str, Path]] = None, device: str = "cpu", dtype: Any = None,
                  size: int = 800, max_size: int = 1333) -> Detector:
    """A Grounding DINO detector: with `config` (an official .py config) `model` is an official
    checkpoint run by groundingdino-py; without, `model` is a transformers hub id or folder."""
    if config is not None:
        from .official import OfficialGroundingDino

        return OfficialGroundingDino.from_checkpoint(model, config, text_encoder, device=device, dtype=dtype,
                                                     size=size, max_size=max_size)
    if text_encoder is not None:
        raise ValueError("text_encoder is for official checkpoints (with config=...); a transformers folder "
                         "carries its own text encoder")
    from .hf import HFGroundingDino

    return HFGroundingDino.from_pretrained(str(model), device=device, dtype=dtype, size=size, max_size=max_size)

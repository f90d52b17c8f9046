"""Grounding DINO through transformers' `GroundingDinoForObjectDetection`: a hub id
(`IDEA-Research/grounding-dino-tiny`, read from the Hugging Face cache; HF_HUB_OFFLINE honoured)
or a local folder (e.g. one `grounded convert` wrote).

Preprocessing is the folder's `GroundingDinoImageProcessor` (shortest side resized to `size`,
longest capped at `max_size`, bilinear on PIL images, rescaled and normalized with ImageNet
statistics, batches padded to the largest image with a pixel mask), and the text goes through its
tokenizer. `dtype` bf16/fp16 runs the float32 model under autocast."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from .base import Detector
from .convert import list_some


class HFGroundingDino(Detector):
    backend = "transformers"
    preprocessing = ("transformers GroundingDinoImageProcessor: resize (shortest side `size`, longest <= `max_size`), "
                     "rescale, ImageNet normalize, pad the batch with a pixel mask")

    def __init__(self, model, processor, device: str = "cpu", size: int = 800, max_size: int = 1333,
                 autocast_dtype: Any = None):
        super().__init__(size, max_size)
        self.model, self.processor, self.device = model, processor, device
        self.autocast_dtype = autocast_dtype
        self.tokenizer = processor.tokenizer

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "cpu", dtype: Any = None, **kwargs) -> "HFGroundingDino":
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        path = Path(name_or_path).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers Grounding DINO folder (no config.json); convert an "
                                    "official checkpoint with `grounded convert grounding-dino`")
        source = str(path) if path.exists() else name_or_path
        try:
            processor = AutoProcessor.from_pretrained(source)
            model, info = GroundingDinoForObjectDetection.from_pretrained(source, output_loading_info=True)
        except OSError as err:
            raise FileNotFoundError(f"cannot load Grounding DINO {name_or_path!r}: tried the local folder {path} and "
                                    f"the Hugging Face hub id {name_or_path!r} ({err})") from None
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            raise ValueError(f"the weights of {name_or_path!r} do not match its config.json: "
                             f"{_shape_report(source) or err}") from None
        # transformers only warns about weights its config expects but the file lacks (they stay random).
        problems = [f"{len(info[k])} {k.replace('_', ' ')} ({list_some(sorted(map(str, info[k])))})"
                    for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
        if problems:
            raise ValueError(f"the weights of {name_or_path!r} do not match its config.json: " + "; ".join(problems))
        # bf16/fp16 run under autocast over the float32 weights: transformers' Grounding DINO does
        # not run with its weights cast (its text position embeddings stay float32).
        return cls(model.to(device).eval(), processor, device, autocast_dtype=dtype, **kwargs)

    def prepare(self, images: Sequence[np.ndarray], size: Optional[int] = None, max_size: Optional[int] = None):
        import torch

        size = {"shortest_edge": size or self.size, "longest_edge": max_size or self.max_size}
        batch = self.processor.image_processor(images=list(images), size=size, return_tensors="pt")
        return batch["pixel_values"], batch["pixel_mask"].to(torch.bool)

    def forward(self, pixel_values, pixel_mask, captions: List[str]):
        import torch

        tokens = self.tokenizer(captions, padding="longest", return_tensors="pt")
        device_type = torch.device(self.device).type
        autocast = torch.autocast(device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.no_grad(), autocast:
            out = self.model(pixel_values=pixel_values.to(self.device), pixel_mask=pixel_mask.to(self.device).long(),
                             **{k: v.to(self.device) for k, v in tokens.items()})
        return out.logits.float().cpu(), out.pred_boxes.float().cpu()


def _shape_report(source: str) -> str:
    """Which weights of a folder or hub id have other shapes than its config.json describes."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, GroundingDinoForObjectDetection
    from transformers.utils import cached_file

    try:
        weights = cached_file(source, "model.safetensors")
        with safe_open(weights, "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        with torch.device("meta"):
            expected = GroundingDinoForObjectDetection(AutoConfig.from_pretrained(source)).state_dict()
    except (OSError, ValueError):
        return ""
    shapes = [f"{k}: {stored[k]} in the weights, {tuple(v.shape)} in the config" for k, v in expected.items()
              if k in stored and stored[k] != tuple(v.shape)]
    return f"{len(shapes)} shapes differ ({list_some(shapes)})" if shapes else ""

"""Grounding DINO through transformers' `GroundingDinoForObjectDetection`: a hub id
(`IDEA-Research/grounding-dino-tiny`: the Hugging Face cache first, see `grounded.hub`) or a local
folder (e.g. one `grounded convert` wrote).

Preprocessing is the folder's `GroundingDinoImageProcessor`, PIL backend (shortest side resized to `size`,
longest capped at `max_size`, bilinear on PIL images, rescaled and normalized with ImageNet
statistics, batches padded to the largest image with a pixel mask), and the text goes through its
tokenizer. `dtype` bf16/fp16 runs the float32 model under autocast."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np

from .base import Detector


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
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, GroundingDinoForObjectDetection, GroundingDinoProcessor

        from ..hub import local_or_hub_folder
        from ..transformers_compat import load_checked, pil_processor_kwargs

        path = Path(name_or_path).expanduser()
        if path.exists() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a transformers Grounding DINO folder (no config.json); convert an "
                                    "official checkpoint with `grounded convert grounding-dino`")
        folder = local_or_hub_folder(name_or_path, "Grounding DINO model")
        try:
            # PIL preprocessing as in transformers 4 (5.x defaults to torchvision, whose resize gives other
            # pixels), and float32 weights whatever the checkpoint was saved in (5.x keeps a checkpoint's dtype).
            processor = GroundingDinoProcessor(AutoImageProcessor.from_pretrained(folder, **pil_processor_kwargs()),
                                               AutoTokenizer.from_pretrained(folder))
            model = load_checked(GroundingDinoForObjectDetection, folder, repr(str(name_or_path)), dtype=torch.float32)
        except OSError as err:
            raise FileNotFoundError(f"cannot load Grounding DINO {name_or_path!r} from {folder}: {err}") from None
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

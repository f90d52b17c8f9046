"""The Segment Anything Model: image encoder + prompt encoder + mask decoder."""

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: Union[ImageEncoderViT, TinyViT],
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: Tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_decoder.iou_token.weight.dtype

    @torch.no_grad()
    def forward(self, batched_input: List[Dict[str, Any]], multimask_output: bool) -> List[Dict[str, torch.Tensor]]:
        """End-to-end prediction, the same contract as segment_anything's `Sam.forward`.

        Each input dict has 'image' (3xHxW, already resized so the long side is img_size),
        'original_size' (H, W) and optionally 'point_coords' (BxNx2) with 'point_labels' (BxN),
        'boxes' (Bx4) and 'mask_inputs' (Bx1x256x256), all in the resized frame. Each output has
        'masks' (BxCxHxW bool at original size), 'iou_predictions' (BxC), 'low_res_logits' (BxCx256x256).
        """
        input_images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        image_embeddings = self.image_encoder(input_images)
        outputs = []
        for record, embedding in zip(batched_input, image_embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs"))
            low_res_masks, iou_predictions = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.threshold_masks(low_res_masks, record["image"].shape[-2:], record["original_size"])
            outputs.append({"masks": masks, "iou_predictions": iou_predictions, "low_res_logits": low_res_masks})
        return outputs

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...]
    ) -> torch.Tensor:
        """Upscale low-res masks to the padded input, crop the padding, resize to the original size."""
        masks = F.interpolate(masks, (self.image_encoder.img_size, self.image_encoder.img_size),
                              mode="bilinear", align_corners=False)
        masks = masks[..., : int(input_size[0]), : int(input_size[1])]
        return F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)

    def threshold_masks(
        self, masks: torch.Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...],
        threshold: Optional[float] = None,
    ) -> torch.Tensor:
        """The boolean masks: `postprocess_masks(...) > threshold` (mask_threshold by default)."""
        threshold = self.mask_threshold if threshold is None else threshold
        return self.postprocess_masks(masks, input_size, original_size) > threshold

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise pixel values and pad (bottom and right) to a square input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))

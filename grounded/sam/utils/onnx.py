"""`SamOnnxModel`: the prompt encoder, mask decoder and mask post-processing in one traceable module,
with segment_anything's interface, for exporting SAM's decoder to ONNX (to run next to a cached
image embedding, e.g. in a browser). Control flow is replaced by arithmetic so one graph serves any
number of points and an optional mask input."""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Sam
from .amg import calculate_stability_score


class SamOnnxModel(nn.Module):
    """Not for calling directly: wrap a Sam for `torch.onnx.export`. Inputs: image_embeddings
    1xCxhxw, point_coords 1xNx2 (already in the resized frame; pad a box-less prompt with a point
    labelled -1), point_labels 1xN (0/1 points, 2/3 box corners, -1 padding), mask_input 1x1x256x256,
    has_mask_input 1, orig_im_size 2 (H, W)."""

    def __init__(self, model: Sam, return_single_mask: bool, use_stability_score: bool = False,
                 return_extra_metrics: bool = False) -> None:
        super().__init__()
        self.mask_decoder = model.mask_decoder
        self.model = model
        self.img_size = model.image_encoder.img_size
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.stability_score_offset = 1.0
        self.return_extra_metrics = return_extra_metrics

    @staticmethod
    def resize_longest_image_size(input_image_size: torch.Tensor, longest_side: int) -> torch.Tensor:
        input_image_size = input_image_size.to(torch.float32)
        scale = longest_side / torch.max(input_image_size)
        return torch.floor(scale * input_image_size + 0.5).to(torch.int64)

    def _embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        encoder = self.model.prompt_encoder
        embedding = encoder.pe_layer._pe_encoding((point_coords + 0.5) / self.img_size)
        labels = point_labels.unsqueeze(-1).expand_as(embedding)
        embedding = embedding * (labels != -1) + encoder.not_a_point_embed.weight * (labels == -1)
        for i in range(encoder.num_point_embeddings):
            embedding = embedding + encoder.point_embeddings[i].weight * (labels == i)
        return embedding

    def _embed_masks(self, input_mask: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        encoder = self.model.prompt_encoder
        return has_mask_input * encoder.mask_downscaling(input_mask) + (
            1 - has_mask_input
        ) * encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        prepadded = self.resize_longest_image_size(orig_im_size, self.img_size)
        masks = masks[..., : int(prepadded[0]), : int(prepadded[1])]
        orig_im_size = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(orig_im_size[0], orig_im_size[1]), mode="bilinear", align_corners=False)

    def select_masks(self, masks: torch.Tensor, iou_preds: torch.Tensor, num_points: int) -> Tuple[torch.Tensor, torch.Tensor]:
        # One click: the best of the multimask outputs; more prompts: the single-mask output.
        # Reweighting the scores does it without control flow.
        reweight = torch.tensor([[1000] + [0] * (self.model.mask_decoder.num_mask_tokens - 1)]).to(iou_preds.device)
        best = torch.argmax(iou_preds + (num_points - 2.5) * reweight, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best].unsqueeze(1), iou_preds[rows, best].unsqueeze(1)

    @torch.no_grad()
    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        sparse = self._embed_points(point_coords, point_labels)
        dense = self._embed_masks(mask_input, has_mask_input)
        masks, scores = self.model.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        if self.use_stability_score:
            scores = calculate_stability_score(masks, self.model.mask_threshold, self.stability_score_offset)
        if self.return_single_mask:
            masks, scores = self.select_masks(masks, scores, point_coords.shape[1])
        upscaled = self.mask_postprocessing(masks, orig_im_size)
        if self.return_extra_metrics:
            stability = calculate_stability_score(upscaled, self.model.mask_threshold, self.stability_score_offset)
            areas = (upscaled > self.model.mask_threshold).sum(-1).sum(-1)
            return upscaled, scores, stability, areas, masks
        return upscaled, scores, masks

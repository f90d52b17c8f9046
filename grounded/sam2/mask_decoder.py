"""SAM 2's mask decoder: SAM's, plus

- the high-resolution features: the trunk's stride-4 and stride-8 maps, projected by `conv_s0` and
  `conv_s1` (once per image, in `Sam2.encode`), are added inside the upscaling;
- an object-score token and head (`obj_score_token`, `pred_obj_score_head`), first among the output
  tokens; the image predictor does not use the score, but the token takes part in the attention;
- IoU predictions through a sigmoid;
- with one mask requested, an unstable single-mask output falls back to the best of the three
  multimask outputs (`dynamic_multimask_via_stability`, what the official builder switches on).
"""

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..sam.cpu.sam2 import Sam2DecoderWing
from ..sam.mask_decoder import MLP
from ..sam.mask_decoder import MaskDecoder as SamMaskDecoder


class MaskDecoder(SamMaskDecoder):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__(transformer_dim=transformer_dim, transformer=transformer,
                         num_multimask_outputs=num_multimask_outputs, iou_head_depth=iou_head_depth,
                         iou_head_hidden_dim=iou_head_hidden_dim)
        self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1, stride=1)
        self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1, stride=1)
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
                                       sigmoid_output=True)
        self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: Optional[Sequence[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """As SAM's `MaskDecoder.forward`, with the image's two projected high-res maps (1 or N each).
        Returns low-res masks N x M x 4h x 4w and IoU predictions N x M."""
        masks, iou_pred, _ = self.predict_masks(image_embeddings, image_pe, sparse_prompt_embeddings,
                                                dense_prompt_embeddings, high_res_features)
        return self.select_masks(masks, iou_pred, multimask_output)

    def select_masks(self, masks: torch.Tensor, iou_pred: torch.Tensor, multimask_output: bool):
        """The three multimask outputs, or the single-mask output (with the stability fallback)."""
        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        if self.dynamic_multimask_via_stability and not self.training:
            return self._dynamic_multimask_via_stability(masks, iou_pred)
        return masks[:, 0:1], iou_pred[:, 0:1]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: Optional[Sequence[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All four masks and IoU predictions, and the object-score logits (N x 1)."""
        if high_res_features is None:
            raise ValueError("SAM 2's mask decoder needs the image's high-resolution features (Sam2.encode)")
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        hs, src = self.attend(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, output_tokens)
        iou_token_out = hs[:, 1, :]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens, :]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = self.mask_logits(src, hyper_in, high_res_features)
        return masks, self.iou_prediction_head(iou_token_out), self.pred_obj_score_head(hs[:, 0, :])

    def mask_logits(self, src: torch.Tensor, hyper_in: torch.Tensor,
                    high_res_features: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
        b, c, h, w = upscaled.shape
        return (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

    def _get_stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        mask_logits = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        area_i = torch.sum(mask_logits > delta, dim=-1).float()
        area_u = torch.sum(mask_logits > -delta, dim=-1).float()
        return torch.where(area_u > 0, area_i / area_u, 1.0)

    def _dynamic_multimask_via_stability(self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor):
        """The single-mask output where it is stable, else the multimask output with the best IoU."""
        multimask_logits, multimask_iou = all_mask_logits[:, 1:], all_iou_scores[:, 1:]
        best = torch.argmax(multimask_iou, dim=-1)
        rows = torch.arange(multimask_iou.shape[0], device=all_iou_scores.device)
        best_logits = multimask_logits[rows, best].unsqueeze(1)
        best_iou = multimask_iou[rows, best].unsqueeze(1)
        single_logits, single_iou = all_mask_logits[:, 0:1], all_iou_scores[:, 0:1]
        is_stable = self._get_stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh
        logits = torch.where(is_stable[..., None, None].expand_as(single_logits), single_logits, best_logits)
        iou = torch.where(is_stable.expand_as(single_iou), single_iou, best_iou)
        return logits, iou


class AcceleratedMaskDecoder(Sam2DecoderWing, MaskDecoder):
    """The decoder with the CPU wing's forward (grounded/sam/cpu/sam2.py), installed by
    `grounded.sam.cpu.accelerate`; state dict and parameters are MaskDecoder's."""

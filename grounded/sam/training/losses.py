"""SAM's training losses (SAM paper, appendix A "Losses and training").

The mask loss is focal (gamma 2, alpha 0.25) + dice, weighted 20:1, on the mask logits. With several
output masks for one prompt (multimask output), only the output with the lowest mask loss is
back-propagated, so each output token is free to specialise on one reading of an ambiguous prompt.
The IoU head is trained with mean-squared error against each output's true IoU with the target, for
*every* output, not only the chosen one: otherwise it never learns to rank the outputs, and both
"take the top-scoring mask" and the mask generator's IoU threshold depend on that ranking.

SAM 2 adds an object-score head: with `object_score_logits`, the loss also has their binary
cross-entropy against "the target is non-empty" (SAM 2's `loss_class`, its focal loss with gamma 0
and no alpha, weight 1), and the mask and IoU losses count only prompts whose target is non-empty.

`locator_loss` trains the text prompt's locator (`grounded.sam.text_prompt`): its heat map over the
image-embedding grid against the target mask, per cell.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss per mask, averaged over its pixels: ... x H x W -> ... (RetinaNet's form)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per mask: ... x H x W -> ... ; `smooth` keeps empty masks finite."""
    p = torch.sigmoid(logits).flatten(-2)
    t = targets.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + smooth) / (p.sum(-1) + t.sum(-1) + smooth)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the thresholded logits with binary targets, per mask (an empty union counts as 1)."""
    pred = logits.detach() > threshold
    truth = targets > 0.5
    inter = (pred & truth).flatten(-2).sum(-1).float()
    union = (pred | truth).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class SamLoss:
    """The combined loss for one decoder call, with what it chose."""

    loss: torch.Tensor  # scalar to back-propagate: mask loss + iou_weight * IoU loss (+ the locator's, text.py)
    mask_loss: torch.Tensor  # scalar: mean over prompts of the chosen output's focal*20 + dice
    iou_loss: torch.Tensor  # scalar: mean squared error of the IoU head over all outputs
    chosen: torch.Tensor  # N: index of the output whose mask loss was back-propagated
    ious: torch.Tensor  # N x M: true IoU of every output
    object_score_loss: Optional[torch.Tensor] = None  # scalar, with object-score logits (SAM 2)


def sam_loss(logits: torch.Tensor, iou_predictions: torch.Tensor, targets: torch.Tensor,
             focal_weight: float = FOCAL_WEIGHT, dice_weight: float = DICE_WEIGHT, iou_weight: float = 1.0,
             object_score_logits: Optional[torch.Tensor] = None, object_score_weight: float = 1.0) -> SamLoss:
    """logits N x M x H x W (M = 1 or the multimask outputs), iou_predictions N x M,
    targets N x H x W or N x 1 x H x W (0/1), object_score_logits N x 1 (SAM 2's head) or None.
    Computed in fp32 whatever the autocast dtype."""
    if targets.ndim == logits.ndim - 1:
        targets = targets[:, None]
    if targets.shape[-2:] != logits.shape[-2:] or targets.shape[0] != logits.shape[0]:
        raise ValueError(f"targets {tuple(targets.shape)} do not fit logits {tuple(logits.shape)}")
    logits = logits.float()
    targets = targets.to(logits.dtype).expand_as(logits)
    per_output = focal_weight * sigmoid_focal_loss(logits, targets) + dice_weight * dice_loss(logits, targets)  # N x M
    chosen = per_output.detach().argmin(dim=1)
    ious = mask_iou(logits, targets)
    if object_score_logits is None:
        mask_loss = per_output.gather(1, chosen[:, None]).mean()
        iou_loss = F.mse_loss(iou_predictions.float(), ious)
        return SamLoss(mask_loss + iou_weight * iou_loss, mask_loss, iou_loss, chosen, ious)
    present = targets[:, 0].flatten(1).amax(1)  # N: 1 where the target has a pixel
    object_loss = F.binary_cross_entropy_with_logits(object_score_logits.float().reshape(-1), present)
    # (as SAM 2's loss_fns: an absent object's masks are not supervised, only its score)
    mask_loss = (per_output.gather(1, chosen[:, None])[:, 0] * present).mean()
    iou_loss = ((iou_predictions.float() - ious) ** 2).mean(1).mul(present).mean()
    loss = mask_loss + iou_weight * iou_loss + object_score_weight * object_loss
    return SamLoss(loss, mask_loss, iou_loss, chosen, ious, object_loss)


def locator_loss(heat_logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 10.0) -> torch.Tensor:
    """Binary cross-entropy of a locator's heat map (N x h x w logits) against the targets (N x H x W,
    0/1, H and W multiples of h and w), each target cell the fraction of its pixels in the mask.
    Cells inside the mask weigh `pos_weight` times more: a shape covers a few percent of the grid,
    and unweighted the map learns "nowhere" first. Mean over cells and masks."""
    targets = targets.float()
    if targets.shape[-2:] != heat_logits.shape[-2:]:
        targets = F.adaptive_avg_pool2d(targets, heat_logits.shape[-2:])
    weight = torch.as_tensor(pos_weight, dtype=heat_logits.dtype, device=heat_logits.device)
    return F.binary_cross_entropy_with_logits(heat_logits.float(), targets, pos_weight=weight)

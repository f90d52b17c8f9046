"""Text-prompt training (SAM paper, section 7.5 and appendix D.5).

No captions are needed: for each training mask the prompt is the CLIP *image* embedding of a crop
around it, projected to one sparse prompt token by `TextPromptProjection`; because CLIP puts images
and their captions in one space, the projection then answers to the CLIP *text* embedding at
inference. The crop, as in the paper: the mask's box expanded by a random factor in [1, 2],
squared, and half the time every pixel outside the mask replaced by CLIP's mean colour (zero after
CLIP's normalisation, so "zeroed" in the space the encoder sees). The decoder's lowest-loss output
and the IoU head are trained as in the interactive loop (`losses.sam_loss`).

With a locator (`TextPromptProjection(locator=True)`), its heat map is trained against each mask
(`losses.locator_loss`), and the decoder sees, next to the token, a positive point drawn uniformly
from the mask: where the locator's peak will be at inference once it is trained. The locator's own
early guesses are not used as the point: prompted on the wrong shape but scored against the named
one, the decoder would learn to ignore the point, which is the failure the locator exists to fix.
"""

from dataclasses import replace
from typing import Sequence, Tuple

import numpy as np
import torch

from ..text_prompt import decode_with_tokens
from .losses import locator_loss, sam_loss

CLIP_MEAN_RGB = (122, 116, 104)  # OpenAI CLIP's normalisation mean in 0..255 (as grounded.clip.crops)


def text_training_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                       expand: Sequence[float] = (1.0, 2.0), zero_outside: float = 0.5,
                       fill: Tuple[int, int, int] = CLIP_MEAN_RGB) -> np.ndarray:
    """The square crop CLIP sees for one mask: its box scaled by U(expand) about the box centre,
    squared to the longer side, padded with `fill` where it leaves the image; with probability
    `zero_outside` the pixels outside the mask are set to `fill`."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("an empty mask has no crop")
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    side = max(x1 - x0, y1 - y0) * rng.uniform(*expand)
    side = max(1, int(round(side)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    src = image
    if rng.random() < zero_outside:
        src = np.where(mask[..., None], image, np.asarray(fill, np.uint8))
    out = np.empty((side, side, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    h, w = mask.shape
    sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = src[sy0:sy1, sx0:sx1]
    return out


def random_points_in(targets: torch.Tensor, img_size: int, rng: np.random.Generator) -> torch.Tensor:
    """One point per target mask (N x h x w, covering the img_size square frame), uniform over its
    pixels, at the pixel's centre: N x 1 x 2 (x, y) in the model's resized frame."""
    n, h, w = targets.shape
    points = []
    for t in targets:
        ys, xs = np.nonzero(t.detach().cpu().numpy() > 0.5)
        i = int(rng.integers(len(ys)))
        points.append(((xs[i] + 0.5) * img_size / w, (ys[i] + 0.5) * img_size / h))
    return torch.tensor(points, dtype=torch.float, device=targets.device)[:, None]


def text_prompt_step(sam, projection, clip, image: np.ndarray, masks: np.ndarray, embedding: torch.Tensor,
                     targets: torch.Tensor, rng: np.random.Generator, expand=(1.0, 2.0), zero_outside: float = 0.5,
                     iou_weight: float = 1.0, locator_weight: float = 1.0):
    """Loss of one image's masks prompted by their crops' CLIP image embeddings (multimask output,
    the lowest-loss mask back-propagated), plus locator_weight x the locator's loss when the
    projection has one. masks N x H x W (original size, for the crops); targets N x 256 x 256 (the
    low-res frame, non-empty); embedding 1 x C x h x w. Returns `SamLoss` (its loss the total)."""
    crops = [text_training_crop(image, m, rng, expand, zero_outside) for m in masks]
    with torch.no_grad():
        clip_embeddings = clip.encode_images(crops).float().to(embedding.device)
    tokens = projection(clip_embeddings)
    points = None
    if projection.locator:
        point = random_points_in(targets, sam.image_encoder.img_size, rng)
        points = (point, torch.ones(point.shape[:2], dtype=torch.int, device=point.device))
    logits, iou = decode_with_tokens(sam, embedding, tokens, points, multimask_output=True)
    out = sam_loss(logits, iou, targets, iou_weight=iou_weight)
    if projection.locator:
        out = replace(out, loss=out.loss + locator_weight * locator_loss(projection.heat_map(clip_embeddings, embedding),
                                                                          targets))
    return out

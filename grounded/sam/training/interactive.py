"""The SAM paper's interactive training loop (appendix A, "Training algorithm"), per mask:

- round 0: one initial prompt, a foreground point sampled uniformly inside the mask or the mask's box
  with noise on every coordinate (standard deviation 10% of the side, capped at 20 pixels);
- 8 rounds that each add one point, sampled uniformly from the error region of the previous
  prediction: a foreground point where it is a false negative, a background point where it is a
  false positive;
- 2 rounds that add no point, one at a random position among the 8 and one at the end, so the model
  learns to refine from its own mask alone.

Every round after the first feeds back the previous round's unthresholded low-res logits as the mask
prompt (detached: each round is its own forward pass), and asks for the single-mask output whenever
more than one prompt is given (a mask prompt counts); only the first round, with its one point or
box, uses the multimask outputs. After a multimask round the output whose loss was back-propagated
(the one closest to the target) is the one fed back.

Everything lives in the model's low-res frame: targets are N x 256 x 256 (the padded 1024 input,
downsampled 4x), points are sampled there and mapped to input pixels for the prompt encoder.

SAM 2 (`grounded.sam2.Sam2`) runs the same rounds through its `training_decode`: the image is its
encoder's levels (the decoder also takes the high-res ones), and the object-score head is trained
too (`sam_loss`'s object_score_logits, as SAM 2's own training does).
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .losses import sam_loss


@dataclass
class InteractiveConfig:
    point_rounds: int = 8  # rounds that add a point from the error region
    no_point_rounds: int = 2  # rounds that add none: one at the end, the rest at random positions
    box_prob: float = 0.5  # chance that the initial prompt is a noisy box rather than a point
    box_noise: float = 0.1  # noise std as a fraction of the box side ...
    box_noise_max: float = 20.0  # ... capped at this many input pixels
    iou_weight: float = 1.0

    @property
    def rounds(self) -> int:
        return 1 + self.point_rounds + self.no_point_rounds


def round_schedule(rng: np.random.Generator, point_rounds: int = 8, no_point_rounds: int = 2) -> List[bool]:
    """For the rounds after the first: True where the round adds a point. One no-point round is
    always last; the others go at random positions among the point rounds."""
    if no_point_rounds <= 0:
        return [True] * point_rounds
    schedule = [True] * point_rounds
    for _ in range(no_point_rounds - 1):
        schedule.insert(int(rng.integers(0, len(schedule) + 1)), False)
    return schedule + [False]


@dataclass
class RoundRecord:
    """What one round did, for tests and logging."""

    added_point: bool
    multimask: bool
    had_mask_prompt: bool
    num_points: int
    loss: float
    ious: torch.Tensor  # N: IoU of the output fed forward (the chosen one)
    mask_input: Optional[torch.Tensor] = field(default=None, repr=False)  # what was fed in (N x 1 x h x w)


@dataclass
class InteractiveResult:
    loss: float  # mean over rounds of the combined loss
    rounds: List[RoundRecord]

    @property
    def first_iou(self) -> float:
        return float(self.rounds[0].ious.mean())

    @property
    def last_iou(self) -> float:
        return float(self.rounds[-1].ious.mean())


def initial_points(targets: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """One foreground point per mask, uniform over its pixels, in input pixels: N x 1 x 2."""
    points = np.zeros((len(targets), 1, 2))
    for i, mask in enumerate(targets):
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(ys)))
        points[i, 0] = ((xs[k] + rng.random()) * scale, (ys[k] + rng.random()) * scale)
    return points


def noisy_boxes(targets: np.ndarray, rng: np.random.Generator, scale: float, input_size: Tuple[int, int],
                noise: float = 0.1, noise_max: float = 20.0) -> np.ndarray:
    """Each mask's box (x0, y0, x1, y1) in input pixels, each coordinate moved by Gaussian noise of std
    `noise` x the side (width for x, height for y), at most `noise_max` pixels; clipped to the image."""
    boxes = np.zeros((len(targets), 4))
    for i, mask in enumerate(targets):
        ys, xs = np.nonzero(mask)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64) * scale
        w, h = box[2] - box[0], box[3] - box[1]
        std = np.minimum(noise * np.array([w, h, w, h]), noise_max)
        box = box + rng.normal(size=4) * std
        box[[0, 2]] = np.clip(box[[0, 2]], 0, input_size[1] - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, input_size[0] - 1)
        boxes[i] = [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    return boxes


def error_points(pred: np.ndarray, targets: np.ndarray, valid: Tuple[int, int], rng: np.random.Generator,
                 scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """One point per mask, uniform over its error region (inside the image): label 1 in a false
    negative, 0 in a false positive; label -1 ("not a point") where the prediction is already exact.
    Returns N x 1 x 2 input-pixel coordinates and N x 1 labels."""
    coords = np.zeros((len(targets), 1, 2))
    labels = -np.ones((len(targets), 1), dtype=np.int64)
    vh, vw = valid
    for i, (p, t) in enumerate(zip(pred, targets)):
        p, t = p[:vh, :vw], t[:vh, :vw]
        err = np.flatnonzero(p != t)
        if err.size == 0:
            continue
        k = int(err[rng.integers(err.size)])
        y, x = divmod(k, vw)
        coords[i, 0] = ((x + rng.random()) * scale, (y + rng.random()) * scale)
        labels[i, 0] = 1 if t[y, x] else 0
    return coords, labels


def run_interactive(sam, image_embedding, targets: torch.Tensor, input_size: Tuple[int, int],
                    rng: np.random.Generator, config: Optional[InteractiveConfig] = None,
                    backward: Optional[Callable[[torch.Tensor], None]] = None, keep_mask_inputs: bool = False
                    ) -> InteractiveResult:
    """Run the rounds for N masks of one image. image_embedding 1 x C x h x w (SAM 2: the list of
    its image encoder's levels, each 1 x C x h x w); targets N x H x W (0/1, the low-res frame);
    input_size (h, w) of the resized image inside the padded input (SAM 2: the whole square input).
    `backward(loss / rounds)` is called after each round, so activations of only one round are alive."""
    config = config or InteractiveConfig()
    pe = sam.prompt_encoder
    low_h, low_w = targets.shape[-2:]
    scale = pe.input_image_size[0] / low_h
    valid = (int(np.ceil(input_size[0] / scale)), int(np.ceil(input_size[1] / scale)))
    device = targets.device
    target_np = targets.detach().cpu().numpy() > 0.5
    n = len(target_np)
    use_box = rng.random() < config.box_prob
    boxes = coords = labels = None
    if use_box:
        boxes = torch.as_tensor(noisy_boxes(target_np, rng, scale, input_size, config.box_noise, config.box_noise_max),
                                dtype=torch.float32, device=device)
        coords, labels = np.zeros((n, 0, 2)), np.zeros((n, 0), dtype=np.int64)
    else:
        coords, labels = initial_points(target_np, rng, scale), np.ones((n, 1), dtype=np.int64)
    schedule = [True] + round_schedule(rng, config.point_rounds, config.no_point_rounds)
    prev_logits = None
    records: List[RoundRecord] = []
    total = 0.0
    image_pe = pe.get_dense_pe()
    for r, adds_point in enumerate(schedule):
        if r > 0 and adds_point:
            new_coords, new_labels = error_points(prev_logits[:, 0].cpu().numpy() > 0, target_np, valid, rng, scale)
            coords, labels = np.concatenate([coords, new_coords], 1), np.concatenate([labels, new_labels], 1)
        points = None
        if coords.shape[1]:
            points = (torch.as_tensor(coords, dtype=torch.float32, device=device),
                      torch.as_tensor(labels, dtype=torch.int, device=device))
        num_prompts = coords.shape[1] + (boxes is not None) + (prev_logits is not None)
        multimask = num_prompts == 1
        mask_prompt = None if prev_logits is None else prev_logits.to(pe.no_mask_embed.weight.dtype)
        logits, iou_pred, object_scores = prompt_and_decode(sam, image_embedding, image_pe, points, boxes,
                                                            mask_prompt, multimask)
        result = sam_loss(logits, iou_pred, targets, iou_weight=config.iou_weight, object_score_logits=object_scores)
        if backward is not None:
            backward(result.loss / len(schedule))
        total += float(result.loss.detach())
        # The fed-back logits stay float32: the next round samples its point from them through numpy,
        # which has no bf16 (autocast gives bf16 logits); the prompt encoder gets them in its own dtype.
        fed = logits.detach().float()[torch.arange(n, device=device), result.chosen][:, None]
        records.append(RoundRecord(
            added_point=bool(adds_point and r > 0), multimask=multimask, had_mask_prompt=prev_logits is not None,
            num_points=int(coords.shape[1]), loss=float(result.loss.detach()),
            ious=result.ious.gather(1, result.chosen[:, None])[:, 0].cpu(),
            mask_input=prev_logits.cpu() if keep_mask_inputs and prev_logits is not None else None,
        ))
        prev_logits = fed
    return InteractiveResult(total / len(schedule), records)


def prompt_and_decode(sam, image_embedding, image_pe: torch.Tensor, points, boxes: Optional[torch.Tensor],
                      mask_prompt: Optional[torch.Tensor], multimask_output: bool
                      ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One round's prompts through the model: low-res logits, IoU predictions, and the object-score
    logits of a model with that head (SAM 2's `training_decode`; None for SAM)."""
    training_decode = getattr(sam, "training_decode", None)
    if training_decode is not None:
        return training_decode(image_embedding, image_pe, points, boxes, mask_prompt, multimask_output)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_prompt)
    return (*decode(sam.mask_decoder, image_embedding, image_pe, sparse, dense, multimask_output), None)


def decode(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
           multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder for training. When only the output heads (hypernetwork MLPs, IoU head) train,
    the CPU wing runs the transformer and upscaling without autograd and records a graph for the
    heads only (`decoder/training`, grounded/sam/cpu/decoder.py: the same function, several times
    cheaper on a CPU); otherwise, and under autocast, the reference decoder with autograd."""
    return decoder(image_embeddings=image_embeddings, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                   dense_prompt_embeddings=dense, multimask_output=multimask_output)

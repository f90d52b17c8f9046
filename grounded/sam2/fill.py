"""Hole and sprinkle filling of SAM 2's low-res masks (`max_hole_area`, `max_sprinkle_area`).

The official predictor finds connected components with a CUDA extension, and on a CPU (or without
the extension) skips the step with a warning. Here the components come from torch operations on any
device: a union-find forest over the pixels, whose roots hook under the smallest label in their
pixels' 8-neighbourhoods, with full path compression after each round (Shiloach-Vishkin style: a few
rounds even for long, winding components), until no root hooks. Each component ends labelled with
its smallest pixel index; its area is a bincount."""

from typing import Tuple

import torch
import torch.nn.functional as F


def connected_components(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of boolean masks N x 1 x H x W. Returns labels (1 + the component's
    smallest pixel index on foreground, 0 on background) and, per pixel, the area of its component
    (0 on background), both int64 N x 1 x H x W, as the official `get_connected_components`."""
    n, _, h, w = mask.shape
    fg = mask.bool().reshape(n, 1, h, w)
    total = n * h * w
    # Pixel indices over the whole batch; they fit float32 exactly below 2**24, where max-pooling
    # (the 3x3 minimum) runs.
    if total >= 2**24:
        return _concatenated([connected_components(m) for m in mask.split(max(1, 2**24 // (h * w) - 1))])
    index = torch.arange(total, device=mask.device)
    parent = index.clone()  # a forest over pixels: every root is its tree's smallest index
    background = float(total)
    while True:
        labels = torch.where(fg.flatten(), parent, total).view(n, 1, h, w)
        neighbour_min = -F.max_pool2d(-labels.float(), kernel_size=3, stride=1, padding=1)
        neighbour_min = neighbour_min.masked_fill(~fg, background).long().flatten()
        labels = labels.flatten()
        hook = fg.flatten() & (neighbour_min < labels)
        if not hook.any():
            break
        # Hook each root under the smallest label next to its pixels, then flatten every tree.
        parent.scatter_reduce_(0, labels[hook], neighbour_min[hook], reduce="amin")
        while True:
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand
    labels = parent.view(n, 1, h, w)
    counts = torch.bincount(labels[fg], minlength=total)
    areas = torch.where(fg, counts[labels], 0)
    local = labels - (index.view(n, 1, h, w) // (h * w)) * (h * w)  # the smallest index within its own mask
    return torch.where(fg, local + 1, 0), areas


def _concatenated(parts):
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fill_holes_and_sprinkles(masks: torch.Tensor, threshold: float, max_hole_area: float,
                             max_sprinkle_area: float) -> torch.Tensor:
    """The official `SAM2Transforms.postprocess_masks` filling on logits N x C x h x w: background
    components (logits <= threshold) of area <= max_hole_area become threshold + 10, then foreground
    components of area <= max_sprinkle_area become threshold - 10."""
    masks = masks.float()
    if max_hole_area > 0:
        labels, areas = connected_components(masks.flatten(0, 1).unsqueeze(1) <= threshold)
        is_hole = ((labels > 0) & (areas <= max_hole_area)).reshape_as(masks)
        masks = torch.where(is_hole, threshold + 10.0, masks)
    if max_sprinkle_area > 0:
        labels, areas = connected_components(masks.flatten(0, 1).unsqueeze(1) > threshold)
        is_sprinkle = ((labels > 0) & (areas <= max_sprinkle_area)).reshape_as(masks)
        masks = torch.where(is_sprinkle, threshold - 10.0, masks)
    return masks

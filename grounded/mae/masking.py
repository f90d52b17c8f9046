"""Random patch masking and the patch <-> image reshapes, as the official MAE code does them."""

from typing import Optional, Tuple

import torch


def check_mask_ratio(mask_ratio: float) -> float:
    ratio = float(mask_ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask_ratio must lie strictly between 0 and 1 (MAE's default is 0.75), got {mask_ratio}")
    return ratio


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """Patches left visible: int(L * (1 - ratio)), as the official code rounds; at least one, and at
    least one masked."""
    keep = int(num_patches * (1 - check_mask_ratio(mask_ratio)))
    if not 0 < keep < num_patches:
        raise ValueError(f"mask_ratio {mask_ratio} leaves {keep} of {num_patches} patches visible; "
                         f"it must leave at least one visible and one masked")
    return keep


def random_masking(tokens: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting noise (B x L; uniform from `generator` when not given):
    the patches with the lowest noise stay visible.

    tokens: B x L x D. Returns the visible tokens B x keep x D (in noise order), the mask B x L
    (1 masked, 0 visible, in patch order) and ids_restore B x L (undoes the shuffle)."""
    B, L, D = tokens.shape
    keep = visible_count(L, mask_ratio)
    if noise is None:
        noise = torch.rand(B, L, generator=generator, device=generator.device if generator else "cpu")
    if tuple(noise.shape) != (B, L):
        raise ValueError(f"noise must be B x L = {B} x {L}, got {tuple(noise.shape)}")
    noise = noise.to(tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    visible = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
    mask = torch.ones(B, L, device=tokens.device)
    mask[:, :keep] = 0
    return visible, torch.gather(mask, 1, ids_restore), ids_restore


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B x C x H x W -> B x (H/p * W/p) x (p*p*C), each patch's pixels row by row, channels last."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """The inverse of `patchify`: B x L x (p*p*C) -> B x C x height x width."""
    B, L, _ = patches.shape
    p = patch_size
    h, w = height // p, width // p
    if h * w != L:
        raise ValueError(f"{L} patches do not tile a {height}x{width} image in {p}-pixel patches")
    x = patches.reshape(B, h, w, p, p, -1)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(B, -1, h * p, w * p)

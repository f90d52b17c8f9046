"""MAE (or plain ViT) encoder -> SAM's image encoder, as the SAM paper initialised it (ViTDet style):

- the patch embedding, resampled to 16-pixel patches when the ViT has others (the official ViT-H/14:
  1024 / 14 is no whole grid) by the pseudo-inverse resize of FlexiViT: the new kernel sees a patch
  upsampled to 16 pixels as the old kernel saw it at 14;
- the absolute position embedding without the cls token, bicubically interpolated to SAM's grid
  (64 x 64 at 1024 pixels);
- the blocks unchanged (mlp.fc1/fc2 renamed lin1/lin2), most attending within 14 x 14 windows and a
  few globally (by default the last block of each quarter, SAM's 2, 5, 8, 11 for 12 blocks), each
  with zero-initialised relative position tables;
- the MAE's final norm and the decoder dropped; a new neck (1x1 and 3x3 convolutions with
  LayerNorms to 256 channels) initialised from `seed`.

`mae_to_sam` puts the encoder in a whole SAM whose prompt encoder and mask decoder come from another
SAM (MobileSAM's by default), ready for `grounded train`.
"""

import dataclasses
from functools import partial
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .load import MAEWeights, StateDict, pos_embed_grid, read_mae_weights
from .modes import outside_inference_mode

SAM_PATCH = 16


def default_global_blocks(depth: int) -> Tuple[int, ...]:
    """The last block of each quarter: (2, 5, 8, 11) for 12 blocks, (7, 15, 23, 31) for 32, as SAM."""
    return tuple(sorted({max(0, (k + 1) * depth // 4 - 1) for k in range(4)}))


def resize_matrix(old: int, new: int) -> torch.Tensor:
    """The (new*new) x (old*old) matrix of the bicubic, antialiased resize of an old x old patch to new x new."""
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resized = F.interpolate(basis, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    return resized.reshape(old * old, new * new).T


def resample_patch_embed(weight: torch.Tensor, new: int) -> torch.Tensor:
    """D x C x p x p -> D x C x new x new by the pseudo-inverse resize (FlexiViT): with R the resize
    of a patch, the new kernel w' = pinv(R)^T w satisfies <R x, w'> = <x, w> for every patch x when
    the resize is upsampling, so the embedding of an image resized by p -> new equals the old one."""
    old = weight.shape[-1]
    if weight.shape[-2] != old:
        raise ValueError(f"patch embedding of {tuple(weight.shape[-2:])} pixels is not square")
    if old == new:
        return weight.clone()
    pinv = torch.linalg.pinv(resize_matrix(old, new))  # (old*old) x (new*new)
    flat = weight.to(torch.float64).reshape(-1, old * old)
    return (flat @ pinv).reshape(*weight.shape[:2], new, new).to(weight.dtype)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int, source: str = "checkpoint") -> torch.Tensor:
    """1 x (prefix + g*g) x D -> 1 x grid x grid x D (SAM's layout), prefix tokens dropped, bicubic."""
    side, prefix = pos_embed_grid(pos_embed, source)
    patches = pos_embed[:, prefix:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    if side != grid:
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return patches.permute(0, 2, 3, 1).to(pos_embed.dtype)


def sam_encoder_state_dict(weights: MAEWeights, image_size: int = 1024, window_size: int = 14,
                           global_blocks: Optional[Sequence[int]] = None, neck: Optional[StateDict] = None) -> StateDict:
    """The ViT's encoder in SAM's `ImageEncoderViT` names; rel-pos tables zero; `neck` (SAM names,
    neck.*) as given (e.g. a freshly initialised encoder's)."""
    sd, cfg = weights.state_dict, weights.config
    if image_size % SAM_PATCH:
        raise ValueError(f"image_size {image_size} is not a multiple of SAM's {SAM_PATCH}-pixel patches")
    grid = image_size // SAM_PATCH
    head_dim = cfg.embed_dim // cfg.num_heads
    global_blocks = default_global_blocks(cfg.depth) if global_blocks is None else tuple(global_blocks)
    out: StateDict = {
        "patch_embed.proj.weight": resample_patch_embed(sd["patch_embed.proj.weight"], SAM_PATCH),
        "patch_embed.proj.bias": sd["patch_embed.proj.bias"].clone(),
        "pos_embed": interpolate_pos_embed(sd["pos_embed"], grid, weights.source),
    }
    renames = {"norm1": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "norm2",
               "mlp.fc1": "mlp.lin1", "mlp.fc2": "mlp.lin2"}
    for i in range(cfg.depth):
        for old, new in renames.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{new}.{kind}"] = sd[f"blocks.{i}.{old}.{kind}"].clone()
        span = grid if i in global_blocks or window_size == 0 else window_size
        for axis in ("h", "w"):
            out[f"blocks.{i}.attn.rel_pos_{axis}"] = torch.zeros(2 * span - 1, head_dim)
    out.update({k: v.clone() for k, v in (neck or {}).items()})
    return out


@outside_inference_mode()
def mae_to_sam_encoder(source: Union[str, Path, MAEWeights], image_size: int = 1024, window_size: int = 14,
                       global_blocks: Optional[Sequence[int]] = None, out_chans: int = 256, seed: int = 0,
                       num_heads: Optional[int] = None):
    """SAM's ImageEncoderViT initialised from an MAE / ViT encoder (a path, hub id or MAEWeights).
    Its parameters are ordinary tensors (trainable) even when called under inference_mode."""
    from ..sam.image_encoder import ImageEncoderViT

    weights = source if isinstance(source, MAEWeights) else read_mae_weights(source, num_heads)
    cfg = weights.config
    global_blocks = default_global_blocks(cfg.depth) if global_blocks is None else tuple(global_blocks)
    _check_blocks(global_blocks, cfg.depth)
    with torch.random.fork_rng():  # the new neck's initialisation, without touching the caller's RNG
        torch.manual_seed(seed)
        encoder = ImageEncoderViT(
            img_size=image_size, patch_size=SAM_PATCH, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim, depth=cfg.depth,
            num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, out_chans=out_chans,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=window_size,
            global_attn_indexes=global_blocks)
    neck = {k: v for k, v in encoder.state_dict().items() if k.startswith("neck.")}
    encoder.load_state_dict(sam_encoder_state_dict(weights, image_size, window_size, global_blocks, neck), strict=True)
    return encoder


@outside_inference_mode()
def mae_to_sam(source: Union[str, Path, MAEWeights], prompt_and_decoder: Union[str, Path, torch.nn.Module] = "mobile_sam",
               image_size: int = 1024, window_size: int = 14, global_blocks: Optional[Sequence[int]] = None,
               seed: int = 0, num_heads: Optional[int] = None):
    """A whole SAM: the encoder from `source` (see mae_to_sam_encoder), the prompt encoder and mask
    decoder from `prompt_and_decoder` (a Sam, or anything grounded.sam.from_pretrained loads);
    trainable even when called under inference_mode."""
    from ..sam import SamConfig, build_sam, from_pretrained

    weights = source if isinstance(source, MAEWeights) else read_mae_weights(source, num_heads)  # bad input first
    donor = prompt_and_decoder if isinstance(prompt_and_decoder, torch.nn.Module) else from_pretrained(prompt_and_decoder)
    cfg = weights.config
    global_blocks = default_global_blocks(cfg.depth) if global_blocks is None else tuple(global_blocks)
    encoder = mae_to_sam_encoder(weights, image_size, window_size, global_blocks,
                                 out_chans=donor.prompt_encoder.embed_dim, seed=seed)
    donor_config = getattr(donor, "config", None) or SamConfig()
    config = dataclasses.replace(
        donor_config, encoder="vit", image_size=image_size, patch_size=SAM_PATCH, encoder_embed_dim=cfg.embed_dim,
        encoder_depth=cfg.depth, encoder_num_heads=cfg.num_heads, window_size=window_size, mlp_ratio=cfg.mlp_ratio,
        encoder_global_attn_indexes=global_blocks)
    model = build_sam(config)
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({k: v for k, v in donor.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))})
    model.load_state_dict(state, strict=True)
    return model.eval()


def _check_blocks(global_blocks: Sequence[int], depth: int) -> None:
    bad = [i for i in global_blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(f"global attention blocks {bad} do not exist in a {depth}-block encoder")

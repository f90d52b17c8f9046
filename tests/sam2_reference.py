"""The official SAM 2 (`sam2==1.1.0`, installed by bin/env without its CUDA extension) built from its
own configs on random weights, and those weights saved in the official layout for grounded to load.

Random weights leave the official zero-initialised tables at zero (no_mem_embed, the Hiera position
embeddings, ...), where a bug that skips them would go unseen: they get random values too."""

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

# A Hiera small enough for CI, in the official layout: 4 stages (the FPN neck and the decoder's
# high-res features need all of them), windowed and global blocks, a stage with two heads.
TINY_HIERA = {
    "embed_dim": 16, "num_heads": 1, "stages": (1, 1, 2, 1), "global_att_blocks": (3,),
    "window_spec": (8, 4, 14, 7), "window_pos_embed_bkg_spatial_size": (7, 7),
}
SIZE_CONFIGS = {"hiera_tiny": "sam2.1_hiera_t", "hiera_small": "sam2.1_hiera_s",
                "hiera_base_plus": "sam2.1_hiera_b+", "hiera_large": "sam2.1_hiera_l"}
ZERO_INITIALISED = ("no_mem_embed", "no_mem_pos_enc", "maskmem_tpos_enc", "no_obj_ptr", "no_obj_embed_spatial",
                    "image_encoder.trunk.pos_embed", "image_encoder.trunk.pos_embed_window")


def official_model(config_name: str = "sam2.1_hiera_t", trunk: Optional[Dict] = None,
                   overrides: Sequence[str] = (), seed: int = 0, device: Optional[str] = "cpu"):
    """sam2.build_sam.build_sam2 from `configs/sam2.1/<config_name>.yaml` (its image postprocessing on,
    as the official image builder sets it), with the trunk's dimensions replaced by `trunk`, random
    weights everywhere (seeded), in eval mode."""
    from grounded.sam2.reference import instantiate_official, official_overrides

    torch.manual_seed(seed)
    model = instantiate_official(config_name, list(overrides) + official_overrides(trunk))
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if param.is_meta:
                break
            if name in ZERO_INITIALISED or name.startswith(ZERO_INITIALISED):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return (model.to(device) if device else model).eval()


def save_official(model, path: Path) -> Path:
    """The official checkpoint layout: {"model": state_dict}."""
    torch.save({"model": model.state_dict()}, str(path))
    return path


def meta_model(config_name: str):
    """The official model of a full size with its parameters on the meta device (shapes only, no
    memory; accelerate's init_empty_weights, since Hiera's drop-path schedule calls .item() while building)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return official_model(config_name, device=None)

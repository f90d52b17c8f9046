"""The official `sam2` package's model (`sam2==1.1.0`, which bin/env installs) built from its own Hydra
configs with a grounded SAM 2's dimensions and weights: the reference that `grounded eval --reference`
runs beside a SAM 2.1 model, and that the tests compare with."""

from typing import Dict, List, Optional, Sequence

import torch

from .build import VIDEO_PREFIXES
from .config import Sam2Config

def official_overrides(trunk: Optional[Dict] = None, config: Sam2Config = Sam2Config()) -> List[str]:
    """Hydra overrides: the image builder's post-processing (dynamic multimask) and, with `trunk`, the
    Hiera dimensions and the FPN neck's channels that follow from them."""
    extra = [
        f"++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability={str(config.dynamic_multimask_via_stability).lower()}",
        f"++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta={config.dynamic_multimask_stability_delta}",
        f"++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh={config.dynamic_multimask_stability_thresh}",
    ]
    if trunk:
        embed = trunk["embed_dim"]
        for key, value in trunk.items():
            value = list(value) if isinstance(value, tuple) else value
            extra.append(f"++model.image_encoder.trunk.{key}={value}".replace(" ", ""))
        channels = [embed * 2**i for i in range(len(trunk["stages"]))][::-1]
        extra.append(f"++model.image_encoder.neck.backbone_channel_list={channels}".replace(" ", ""))
    return extra


def instantiate_official(config_name: str = "sam2.1_hiera_t", overrides: Sequence[str] = ()) -> torch.nn.Module:
    """sam2's `SAM2Base` from `configs/sam2.1/<config_name>.yaml` with `overrides`, random weights."""
    try:
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
    except ImportError as err:
        raise RuntimeError(f"the SAM 2 reference needs sam2 1.1.0 and hydra-core ({err}); bin/env installs both") from None
    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
    cfg = compose(config_name=f"configs/sam2.1/{config_name}.yaml", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def reference_model(model: torch.nn.Module, device: str = "cpu") -> torch.nn.Module:
    """The official model with `model`'s (a grounded `Sam2`) dimensions and weights, in eval mode; its
    video-memory modules, which the image path never runs, keep their random values."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    hiera = model.image_encoder.trunk
    ends = [-1] + list(hiera.stage_ends)
    trunk = {"embed_dim": hiera.pos_embed.shape[1], "num_heads": hiera.blocks[0].attn.num_heads,
             "stages": tuple(b - a for a, b in zip(ends, ends[1:])), "global_att_blocks": tuple(hiera.global_att_blocks),
             "window_spec": tuple(hiera.window_spec),
             "window_pos_embed_bkg_spatial_size": tuple(hiera.window_pos_embed_bkg_spatial_size)}
    reference = instantiate_official(overrides=official_overrides(trunk))
    missing, unexpected = reference.load_state_dict(state, strict=False)
    not_video = [k for k in missing if not k.startswith(VIDEO_PREFIXES)]
    if unexpected or not_video:
        raise ValueError(f"sam2's model cannot take these weights: missing {not_video[:5]}, unexpected {unexpected[:5]}")
    return reference.to(device).eval()

"""Building SAM 2 / 2.1 image models and loading their weights: the official `sam2.1_hiera_*.pt` and
`sam2_hiera_*.pt` files (`{"model": state_dict}`), safetensors files, grounded's own save folders, and
Hugging Face `Sam2Model` folders or hub ids (`facebook/sam2.1-hiera-*`, see `hf.py`). Pickles are read
with `weights_only=True`. The official checkpoints also hold the video-memory modules; the image model
does not build them and loading sets their tensors aside (`VIDEO_PREFIXES`)."""

import json
import re
from functools import partial
from pathlib import Path
from typing import List, Mapping, Optional, Tuple, Union

import torch

from ..sam.checkpoint import CheckpointError, StateDict, read_state_dict
from ..sam.checkpoint import checkpoint_family as family_of
from .config import OFFICIAL_CONFIGS, Sam2Config, official_size
from .hieradet import Hiera
from .image_encoder import FpnNeck, ImageEncoder
from ..sam import cpu
from .mask_decoder import AcceleratedMaskDecoder, MaskDecoder
from .model import Sam2
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

CONFIG_FILE = "grounded_sam2_config.json"
WEIGHTS_FILE = "model.safetensors"  # (as grounded.sam.build writes it)
IMAGE_PREFIXES = ("image_encoder.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
VIDEO_PREFIXES = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
                  "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.", "no_obj_embed_spatial")
# Official sizes by their blocks per stage: the attention layout (global blocks, window sizes) and the
# head count leave no trace in the weights.
_SIZE_BY_STAGES = {config.stages: name for name, config in OFFICIAL_CONFIGS.items()}
cpu.register(Sam2, MaskDecoder, AcceleratedMaskDecoder)  # the CPU wing's decoder paths serve SAM 2 too


def build_sam2(config: Union[Sam2Config, str] = "hiera_tiny", checkpoint: Optional[Union[str, Path]] = None,
               paths: str = "auto") -> Sam2:
    """A SAM 2 image model of the given dimensions (a `Sam2Config` or an official size: 'hiera_tiny',
    'hiera_small', 'hiera_base_plus', 'hiera_large'), randomly initialised unless a checkpoint is
    given, in eval mode, with the CPU wing's decoder paths (`grounded.sam.cpu.accelerate(model, paths)`;
    "reference" for the core modules only)."""
    if isinstance(config, str):
        if config not in OFFICIAL_CONFIGS:
            raise ValueError(f"unknown SAM 2 size {config!r}; expected one of {sorted(OFFICIAL_CONFIGS)}")
        config = OFFICIAL_CONFIGS[config]
    emb = config.image_embedding_size
    trunk = Hiera(embed_dim=config.embed_dim, num_heads=config.num_heads, q_pool=config.q_pool, stages=config.stages,
                  window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size,
                  window_spec=config.window_spec, global_att_blocks=config.global_att_blocks)
    neck = FpnNeck(config.d_model, config.backbone_channel_list, config.fpn_top_down_levels)
    model = Sam2(
        image_encoder=ImageEncoder(trunk, neck, scalp=config.scalp, img_size=config.image_size),
        sam_prompt_encoder=PromptEncoder(embed_dim=config.d_model, image_embedding_size=(emb, emb),
                                         input_image_size=(config.image_size, config.image_size),
                                         mask_in_chans=config.mask_in_chans),
        sam_mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(depth=config.decoder_depth, embedding_dim=config.d_model,
                                          mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads),
            transformer_dim=config.d_model, iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
            dynamic_multimask_via_stability=config.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=config.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=config.dynamic_multimask_stability_thresh,
        ),
        image_size=config.image_size,
    )
    model.config = config
    model.eval()
    if checkpoint is not None:
        load_state_dict_strict(model, read_sam2_state_dict(checkpoint), str(checkpoint))
    return cpu.accelerate(model, paths)


build_sam2_hiera_tiny = partial(build_sam2, "hiera_tiny")
build_sam2_hiera_small = partial(build_sam2, "hiera_small")
build_sam2_hiera_base_plus = partial(build_sam2, "hiera_base_plus")
build_sam2_hiera_large = partial(build_sam2, "hiera_large")


_FAMILY_NAMES = {
    "sam": "a SAM 1 checkpoint (ViT-B/L/H or MobileSAM): load it with grounded.sam.from_pretrained or sam_model_registry",
    "sam_hf": "a Hugging Face SamModel (SAM 1): load it with grounded.sam.from_pretrained",
    "sam3": "a SAM 3 checkpoint: load it with grounded.sam3",
    "unknown": "not a SAM 2 checkpoint (no sam_mask_decoder or image_encoder.trunk weights)",
}


def image_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> StateDict:
    """The image model's tensors of an official-named SAM 2 state dict, the video-memory ones set
    aside; any other family is refused, naming what it is."""
    family = family_of(state_dict)
    if family == "sam2_hf":
        from .hf import convert_hf_state_dict

        state_dict = convert_hf_state_dict(state_dict)
    elif family != "sam2":
        raise CheckpointError(f"{source} is {_FAMILY_NAMES[family]}")
    return {k: v for k, v in state_dict.items() if k.startswith(IMAGE_PREFIXES)}


def read_sam2_state_dict(path: Union[str, Path]) -> StateDict:
    return image_state_dict(read_state_dict(path), str(path))


def infer_config(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Sam2Config:
    """The dimensions of an (official-named) SAM 2 state dict. The blocks per stage pick the official
    size, whose attention layout and head count (not in the weights) are taken; a layout that is no
    official size needs its `Sam2Config` given."""
    sd = state_dict
    if "image_encoder.trunk.patch_embed.proj.weight" not in sd:
        raise CheckpointError(f"{source}: {_FAMILY_NAMES.get(family_of(sd), _FAMILY_NAMES['unknown'])}")
    embed_dim = sd["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    depth = _count(sd, r"image_encoder\.trunk\.blocks\.(\d+)\.")
    stage_starts = [0] + [i for i in range(1, depth) if f"image_encoder.trunk.blocks.{i}.proj.weight" in sd] + [depth]
    stages = tuple(b - a for a, b in zip(stage_starts, stage_starts[1:]))
    size = _SIZE_BY_STAGES.get(stages)
    if size is None:
        raise CheckpointError(f"{source}: a Hiera with {stages} blocks per stage is no official SAM 2 size "
                              f"({', '.join(f'{n} {c.stages}' for n, c in OFFICIAL_CONFIGS.items())}); its attention "
                              f"layout is not in the weights: pass config=Sam2Config(...)")
    official = OFFICIAL_CONFIGS[size]
    config = Sam2Config(**{**official.to_dict(),
                           "embed_dim": embed_dim,
                           "window_pos_embed_bkg_spatial_size": tuple(sd["image_encoder.trunk.pos_embed"].shape[-2:]),
                           "d_model": sd["sam_mask_decoder.iou_token.weight"].shape[1]})
    return config


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def load_state_dict_strict(model: Sam2, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> Sam2:
    """Load with strict=True, turning a mismatch into an error that names the size the weights fit."""
    from ..sam.build import describe_mismatch

    mismatch = describe_mismatch(model.state_dict(), state_dict)
    if mismatch:
        try:
            fits = official_size(infer_config(state_dict))
            hint = f" The checkpoint is SAM 2 {fits}." if fits else ""
        except CheckpointError as err:
            hint = f" ({err})"
        mine = official_size(getattr(model, "config", None) or Sam2Config(embed_dim=-1))
        raise CheckpointError(f"{source} does not fit this SAM 2 model{f' ({mine})' if mine else ''}: {mismatch}.{hint}")
    model.load_state_dict(state_dict, strict=True)
    return model


def save_pretrained(model: Sam2, directory: Union[str, Path]) -> Path:
    """Write `model.safetensors` and its config to a folder that `from_pretrained` reads."""
    from ..sam.build import write_folder

    return write_folder(model, directory, CONFIG_FILE, getattr(model, "config", None) or infer_config(model.state_dict()))


def from_pretrained(
    name_or_path: Union[str, Path],
    *,
    config: Optional[Sam2Config] = None,
    model_size: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: Optional[torch.dtype] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    revision: Optional[str] = None,
) -> Sam2:
    """Load a SAM 2 / 2.1 image model from:

    - a known checkpoint name (`sam2.1_hiera_tiny`, ...; see `grounded weights`);
    - an official checkpoint file (`sam2.1_hiera_*.pt`, `sam2_hiera_*.pt`) or a `.safetensors` file;
    - a folder saved by `save_pretrained`, or a Hugging Face `Sam2Model` folder (config.json + weights);
    - a Hugging Face hub id such as `facebook/sam2.1-hiera-tiny` (the local HF cache when HF_HUB_OFFLINE=1).

    Dimensions come from the checkpoint (`config` overrides them); model_size ('hiera_tiny', ...) checks
    the checkpoint is that size. A checkpoint of another family is refused, naming what it is."""
    tried: List[str] = []
    state_dict, found_config = _resolve(str(name_or_path), tried, cache_dir, revision)
    if state_dict is None:
        raise FileNotFoundError(
            f"could not find SAM 2 weights for {str(name_or_path)!r}. Tried:\n  - " + "\n  - ".join(tried))
    if model_size is not None:
        if model_size not in OFFICIAL_CONFIGS:
            raise ValueError(f"unknown model_size {model_size!r}; expected one of {sorted(OFFICIAL_CONFIGS)}")
        config = OFFICIAL_CONFIGS[model_size]
    config = config or found_config or infer_config(state_dict, str(name_or_path))
    model = build_sam2(config)
    load_state_dict_strict(model, state_dict, str(name_or_path))
    return model.to(device=device, dtype=dtype).eval()


def _resolve(name: str, tried: List[str], cache_dir, revision) -> Tuple[Optional[StateDict], Optional[Sam2Config]]:
    from .. import weights

    path = Path(name).expanduser()
    if path.is_file():
        return read_sam2_state_dict(path), None
    if path.is_dir():
        return _read_folder(path, tried)
    tried.append(f"local path {path} (does not exist)")
    known = {n for n, c in weights.CHECKPOINTS.items() if (c.model_type or "").startswith("sam2")}
    if name in known:
        try:
            return read_sam2_state_dict(weights.fetch(name, cache_dir=cache_dir)), None
        except FileNotFoundError as err:
            tried.append(f"known checkpoint {name!r}: {err}")
            return None, None
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        from ..hub import hub_snapshot

        folder = hub_snapshot(name, ["*.json", "*.safetensors", "*.bin"], tried, cache_dir, revision)
        return (None, None) if folder is None else _read_folder(folder, tried)
    tried.append(f"{name!r} is not a known SAM 2 checkpoint name ({', '.join(sorted(known))}) "
                 f"nor a hub id of the form org/name")
    return None, None


def _read_folder(folder: Path, tried: List[str]) -> Tuple[Optional[StateDict], Optional[Sam2Config]]:
    ours = folder / CONFIG_FILE
    if ours.is_file():
        return read_sam2_state_dict(folder / WEIGHTS_FILE), Sam2Config.from_dict(json.loads(ours.read_text()))
    if (folder / "config.json").is_file():
        from .hf import load_hf_folder

        return load_hf_folder(folder)
    tried.append(f"folder {folder}: has neither {CONFIG_FILE} nor a Hugging Face config.json")
    return None, None


def load_sam_or_sam2(name_or_path: Union[str, Path], *, device: Union[str, torch.device] = "cpu",
                     dtype: Optional[torch.dtype] = None, image_encoder_backend: str = "torch", **kwargs):
    """A SAM 1 model (`grounded.sam.from_pretrained`, with image_encoder_backend and kwargs) or, when the
    weights are SAM 2 / 2.1's, this package's: the loader of every command and node that takes either
    (SAM 2's encoder runs in PyTorch)."""
    from ..sam import from_pretrained as sam_from_pretrained
    from ..sam.build import IsSam2Error

    try:
        return sam_from_pretrained(name_or_path, device=device, dtype=dtype,
                                   image_encoder_backend=image_encoder_backend, **kwargs)
    except IsSam2Error:
        return from_pretrained(name_or_path, device=device, dtype=dtype)

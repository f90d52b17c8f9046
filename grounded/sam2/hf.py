"""Hugging Face `transformers` SAM 2 checkpoints (`Sam2Model`, model_type "sam2", e.g.
`facebook/sam2.1-hiera-tiny`) in grounded's SAM 2 model: the state dict mapped back to the official
names and `config.json` to a `Sam2Config`. Pure key mapping and JSON: transformers need not be installed.

The mapping (HF -> official), every other name being equal on both sides but for the prefix
(`prompt_encoder.` -> `sam_prompt_encoder.`, `mask_decoder.` -> `sam_mask_decoder.`):

    no_memory_embedding                               no_mem_embed
    shared_image_embedding.positional_embedding       sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    prompt_encoder.shared_embedding.positional_embedding    (dropped: the same matrix, written twice)
    vision_encoder.backbone.patch_embed.projection.*  image_encoder.trunk.patch_embed.proj.*
    vision_encoder.backbone.{pos_embed,pos_embed_window}    image_encoder.trunk.same
    vision_encoder.backbone.blocks.{i}.layer_norm1|2  image_encoder.trunk.blocks.{i}.norm1|2
    vision_encoder.backbone.blocks.{i}.mlp.proj_in|proj_out    ....mlp.layers.0|1
    vision_encoder.backbone.blocks.{i}.{attn.qkv,attn.proj,proj}    (same names under image_encoder.trunk)
    vision_encoder.neck.convs.{i}.*                   image_encoder.neck.convs.{i}.conv.*
    prompt_encoder.point_embed.weight (4 rows)        sam_prompt_encoder.point_embeddings.{i}.weight
    prompt_encoder.mask_embed.conv1 / layer_norm1 / conv2 / layer_norm2 / conv3
                                                      sam_prompt_encoder.mask_downscaling.0 / 1 / 3 / 4 / 6
    mask_decoder.upscale_conv1 / upscale_layer_norm / upscale_conv2    sam_mask_decoder.output_upscaling.0 / 1 / 3
    mask_decoder.transformer.*.o_proj                 ....out_proj
    mask_decoder.transformer.layers.{i}.layer_norm1..4, .mlp.proj_in|proj_out    ....norm1..4, .mlp.layers.0|1
    mask_decoder.transformer.layer_norm_final_attn    sam_mask_decoder.transformer.norm_final_attn
    mask_decoder.{output_hypernetworks_mlps.{k},iou_prediction_head,pred_obj_score_head}.proj_in / layers.{j} / proj_out
                                                      ....layers.0 / layers.{j+1} / layers.{depth-1}
"""

import json
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch

from ..sam.checkpoint import CheckpointError
from ..sam.hf import _read_weights
from .config import Sam2Config

StateDict = Dict[str, torch.Tensor]

_WB = r"(weight|bias)"
_MASK_EMBED = {"conv1": "0", "layer_norm1": "1", "conv2": "3", "layer_norm2": "4", "conv3": "6"}
_UPSCALING = {"upscale_conv1": "0", "upscale_layer_norm": "1", "upscale_conv2": "3"}
_RULES = [
    (r"no_memory_embedding", "no_mem_embed"),
    (r"shared_image_embedding\.positional_embedding", "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (rf"vision_encoder\.backbone\.patch_embed\.projection\.{_WB}", r"image_encoder.trunk.patch_embed.proj.\1"),
    (r"vision_encoder\.backbone\.(pos_embed|pos_embed_window)", r"image_encoder.trunk.\1"),
    (rf"vision_encoder\.backbone\.blocks\.(\d+)\.layer_norm([12])\.{_WB}", r"image_encoder.trunk.blocks.\1.norm\2.\3"),
    (rf"vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.proj_in\.{_WB}", r"image_encoder.trunk.blocks.\1.mlp.layers.0.\2"),
    (rf"vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.proj_out\.{_WB}", r"image_encoder.trunk.blocks.\1.mlp.layers.1.\2"),
    (rf"vision_encoder\.backbone\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|proj)\.{_WB}", r"image_encoder.trunk.blocks.\1.\2.\3"),
    (rf"vision_encoder\.neck\.convs\.(\d+)\.{_WB}", r"image_encoder.neck.convs.\1.conv.\2"),
    (r"prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight", r"sam_prompt_encoder.\1.weight"),
    *[(rf"prompt_encoder\.mask_embed\.{hf}\.{_WB}", rf"sam_prompt_encoder.mask_downscaling.{ours}.\1")
      for hf, ours in _MASK_EMBED.items()],
    (r"mask_decoder\.(iou_token|mask_tokens|obj_score_token)\.weight", r"sam_mask_decoder.\1.weight"),
    (rf"mask_decoder\.(conv_s0|conv_s1)\.{_WB}", r"sam_mask_decoder.\1.\2"),
    *[(rf"mask_decoder\.{hf}\.{_WB}", rf"sam_mask_decoder.output_upscaling.{ours}.\1") for hf, ours in _UPSCALING.items()],
    (rf"mask_decoder\.transformer\.(layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
     rf"|final_attn_token_to_image)\.(q_proj|k_proj|v_proj)\.{_WB}", r"sam_mask_decoder.transformer.\1.\2.\3"),
    (rf"mask_decoder\.transformer\.(layers\.\d+\.(?:self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"
     rf"|final_attn_token_to_image)\.o_proj\.{_WB}", r"sam_mask_decoder.transformer.\1.out_proj.\2"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])\.{_WB}", r"sam_mask_decoder.transformer.layers.\1.norm\2.\3"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.proj_in\.{_WB}", r"sam_mask_decoder.transformer.layers.\1.mlp.layers.0.\2"),
    (rf"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.proj_out\.{_WB}", r"sam_mask_decoder.transformer.layers.\1.mlp.layers.1.\2"),
    (rf"mask_decoder\.transformer\.layer_norm_final_attn\.{_WB}", r"sam_mask_decoder.transformer.norm_final_attn.\1"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]
_FEED_FORWARD = re.compile(rf"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
                           rf"\.(proj_in|proj_out|layers\.(\d+))\.{_WB}")
_DROPPED = ("prompt_encoder.shared_embedding.positional_embedding",)


def convert_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """A transformers `Sam2Model` state dict under the official names (image parts; the video ones
    of `Sam2VideoModel` are left out). Raises CheckpointError listing keys no rule maps."""
    depths: Dict[str, int] = {}
    for key in sd:
        m = _FEED_FORWARD.fullmatch(key)
        if m and m.group(3) is not None:
            depths[m.group(1)] = max(depths.get(m.group(1), 0), int(m.group(3)) + 3)
    image_pe, point_pe = sd.get("shared_image_embedding.positional_embedding"), sd.get(_DROPPED[0])
    if image_pe is not None and point_pe is not None and not torch.equal(image_pe, point_pe):
        # The official model has one matrix for both; the published conversions write it twice.
        raise CheckpointError("the Hugging Face SAM 2 checkpoint has two different positional-encoding matrices "
                              f"(shared_image_embedding and {_DROPPED[0]}); the official model has one")
    out: StateDict = {}
    unknown = []
    for key, value in sd.items():
        if key in _DROPPED or not key.startswith(("vision_encoder.", "prompt_encoder.", "mask_decoder.",
                                                  "no_memory_embedding", "shared_image_embedding.")):
            continue
        if key == "prompt_encoder.point_embed.weight":
            for i, row in enumerate(value):
                out[f"sam_prompt_encoder.point_embeddings.{i}.weight"] = row[None].clone()
            continue
        m = _FEED_FORWARD.fullmatch(key)
        if m:
            head, part, index, kind = m.groups()
            depth = depths.get(head, 2)
            layer = 0 if part == "proj_in" else depth - 1 if part == "proj_out" else int(index) + 1
            out[f"sam_mask_decoder.{head}.layers.{layer}.{kind}"] = value
            continue
        for pattern, replacement in _COMPILED:
            if pattern.fullmatch(key):
                out[pattern.sub(replacement, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} keys of the Hugging Face SAM 2 checkpoint map to no official name: {unknown[:8]}")
    return out


def sam2_config_from_hf(hf_config: Mapping[str, Any], source: str = "config.json") -> Sam2Config:
    model_type = hf_config.get("model_type")
    if model_type not in ("sam2", "sam2_video"):
        raise CheckpointError(f"{source} has model_type {model_type!r}, not a SAM 2 model ('sam2')")
    vision = hf_config.get("vision_config") or {}
    backbone = vision.get("backbone_config") or {}
    decoder = hf_config.get("mask_decoder_config") or {}
    prompt = hf_config.get("prompt_encoder_config") or {}
    defaults = Sam2Config()
    stages = tuple(backbone.get("blocks_per_stage") or (1, 2, 7, 2))
    return Sam2Config(
        embed_dim=backbone.get("hidden_size", 96),
        num_heads=backbone.get("num_attention_heads", 1),
        stages=stages,
        global_att_blocks=tuple(backbone.get("global_attention_blocks") or (5, 7, 9)),
        window_spec=tuple(backbone.get("window_size_per_stage") or (8, 4, 14, 7)),
        window_pos_embed_bkg_spatial_size=tuple(backbone.get("window_positional_embedding_background_size") or (7, 7)),
        q_pool=backbone.get("num_query_pool_stages", 3),
        d_model=vision.get("fpn_hidden_size", 256),
        fpn_top_down_levels=tuple(vision.get("fpn_top_down_levels") or (2, 3)),
        image_size=prompt.get("image_size", 1024),
        mask_in_chans=prompt.get("mask_input_channels", defaults.mask_in_chans),
        decoder_depth=decoder.get("num_hidden_layers", 2),
        decoder_num_heads=decoder.get("num_attention_heads", 8),
        decoder_mlp_dim=decoder.get("mlp_dim", 2048),
        num_multimask_outputs=decoder.get("num_multimask_outputs", 3),
        iou_head_depth=decoder.get("iou_head_depth", 3),
        iou_head_hidden_dim=decoder.get("iou_head_hidden_dim", 256),
        dynamic_multimask_via_stability=decoder.get("dynamic_multimask_via_stability", True),
        dynamic_multimask_stability_delta=decoder.get("dynamic_multimask_stability_delta", 0.05),
        dynamic_multimask_stability_thresh=decoder.get("dynamic_multimask_stability_thresh", 0.98),
    )


def load_hf_folder(folder: Union[str, Path]) -> Tuple[StateDict, Sam2Config]:
    """The official-named image state dict and the config of a Hugging Face `Sam2Model` folder."""
    folder = Path(folder)
    config = sam2_config_from_hf(json.loads((folder / "config.json").read_text()), str(folder / "config.json"))
    return convert_hf_state_dict(_read_weights(folder)), config

"""Reading SAM checkpoints: the tensors of a `.pth`/`.safetensors` file (pickles read with
`weights_only=True`, never executed) and the model dimensions their shapes imply. `build` and `hf`
both read through here."""

import re
from pathlib import Path
from typing import Dict, Mapping, Union

import torch

from .config import SamConfig

StateDict = Dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model."""


def read_state_dict(path: Union[str, Path]) -> StateDict:
    """Tensors of a `.pth`/`.pt`/`.bin` (safe unpickling only) or `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError and friends
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise CheckpointError(
                f"{path} is a pickle that carries code or objects other than tensors; grounded loads "
                f"checkpoints with weights_only=True and will not execute it. Re-save its state_dict "
                f"(torch.save(model.state_dict(), ...)) or convert it to safetensors. ({err.__class__.__name__})"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(data, Mapping) and key in data and isinstance(data[key], Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return dict(data)


def checkpoint_family(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What a state dict is: 'sam2', 'sam2_hf' (transformers' Sam2Model), 'sam' (SAM 1, ViT or
    MobileSAM), 'sam_hf' (transformers' SamModel), 'sam3', or 'unknown'."""
    keys = set(state_dict)
    if "sam_mask_decoder.iou_token.weight" in keys or "image_encoder.trunk.patch_embed.proj.weight" in keys:
        return "sam2"
    if any(k.startswith("vision_encoder.backbone.") for k in keys) and "mask_decoder.obj_score_token.weight" in keys:
        return "sam2_hf"
    if "mask_decoder.iou_token.weight" in keys and any(k.startswith("image_encoder.") for k in keys):
        return "sam"
    if any(k.startswith("vision_encoder.") for k in keys) and "mask_decoder.iou_token.weight" in keys:
        return "sam_hf"
    if any(k.startswith(("detector.", "tracker.")) for k in keys):
        return "sam3"
    return "unknown"


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> SamConfig:
    """Recover the model dimensions from the shapes in a (grounded/official-named) state dict.

    Everything is recoverable except the decoder's head count, which leaves no trace in the weights:
    it is taken as 8, the value of every official model (`save_pretrained` records it)."""
    sd = state_dict
    if "image_encoder.patch_embed.proj.weight" not in sd and "image_encoder.patch_embed.seq.0.c.weight" not in sd:
        raise CheckpointError("not a SAM state dict: no image_encoder.patch_embed weights")
    decoder_layers = _count(sd, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    common = dict(
        prompt_embed_dim=sd["mask_decoder.iou_token.weight"].shape[1],
        mask_in_chans=sd["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        decoder_depth=decoder_layers,
        decoder_mlp_dim=sd["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
        num_multimask_outputs=sd["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        iou_head_depth=_count(sd, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=sd["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    )
    if "image_encoder.patch_embed.seq.0.c.weight" in sd:
        stages = _count(sd, r"image_encoder\.layers\.(\d+)\.")
        dims, depths, heads, windows = [], [], [], []
        for i in range(stages):
            depths.append(_count(sd, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\."))
            if i == 0:
                dims.append(sd["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[1])
                # The convolutional first stage has no attention: its entries are placeholders.
                heads.append(SamConfig.tiny_num_heads[0])
                windows.append(SamConfig.tiny_window_sizes[0])
            else:
                bias = sd[f"image_encoder.layers.{i}.blocks.0.attn.attention_biases"]
                dims.append(sd[f"image_encoder.layers.{i}.blocks.0.attn.proj.weight"].shape[0])
                heads.append(bias.shape[0])
                windows.append(int(round(bias.shape[1] ** 0.5)))
        head = sd.get("image_encoder.head.weight")
        return SamConfig(
            encoder="tiny_vit",
            tiny_embed_dims=tuple(dims), tiny_depths=tuple(depths), tiny_num_heads=tuple(heads),
            tiny_window_sizes=tuple(windows), tiny_num_classes=0 if head is None else head.shape[0],
            mlp_ratio=sd["image_encoder.layers.1.blocks.0.mlp.fc1.weight"].shape[0] / dims[1],
            **common,
        )
    patch = sd["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    grid = sd["image_encoder.pos_embed"].shape[1]
    depth = _count(sd, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = sd["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_blocks, window = [], 14
    for i in range(depth):
        span = (sd[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2
        if span == grid:
            global_blocks.append(i)
        else:
            window = span
    return SamConfig(
        encoder="vit", image_size=grid * patch_size, patch_size=patch_size, encoder_embed_dim=embed_dim,
        encoder_depth=depth, encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=tuple(global_blocks), window_size=window,
        mlp_ratio=sd["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        **common,
    )


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0

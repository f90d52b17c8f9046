"""Tiny random SAM 3 checkpoints, laid out like `facebook/sam3`, for tests and offline runs.

`facebook/sam3` is a `Sam3VideoModel` checkpoint (config.json of model_type "sam3_video" with a
`detector_config` and a `tracker_config`; weights named `detector_model.*`, `tracker_model.*` and
`tracker_neck.*`), with a `Sam3Processor` (a `Sam3ImageProcessor` and CLIP's BPE tokenizer).
`tiny_sam3(dir)` writes the same layout from a small config: the concept model (`Sam3Model`) and
the interactive tracker (`Sam3TrackerModel`) both load from it with their own `from_pretrained`.
`tiny_sam3_detector(dir)` writes a concept-model-only checkpoint (model_type "sam3").

The weights are written as the model's state dict under its own names: transformers 5's
`Sam3VideoModel.save_pretrained` applies the tracker's load-time renaming in reverse inside the
video model and writes `tracker_model.tracker_model.*`, which no loader reads back.

Random weights are drawn with a larger spread than transformers' initialisation (`WEIGHT_STD`) so
the scores of the queries and the mask logits spread out: a parity test needs many instances above
its thresholds, and masks that are neither empty nor full."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

IMAGE_SIZE = 112  # 8 x 8 patches of 14 pixels
FPN_SIZES = [[32, 32], [16, 16], [8, 8]]  # the neck's 4x, 2x and 1x levels
NUM_QUERIES = 40
WEIGHT_STD = 0.1


def tiny_sam3_config(image_size: int = IMAGE_SIZE, num_queries: int = NUM_QUERIES):
    """A `Sam3VideoConfig` with the real architecture in few, narrow layers (detector and tracker)."""
    from transformers import Sam3VideoConfig

    grid = image_size // 14
    backbone = dict(model_type="sam3_vit_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, image_size=image_size, patch_size=14, window_size=grid // 2,
                    global_attn_indexes=[1], pretrain_image_size=image_size // 2)
    vision = dict(model_type="sam3_vision_model", backbone_config=backbone, fpn_hidden_size=32,
                  backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2])
    small = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
    detector = dict(
        model_type="sam3", vision_config=vision,
        text_config=dict(model_type="clip_text_model", vocab_size=49408, hidden_size=32, intermediate_size=64,
                         projection_dim=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32),
        geometry_encoder_config=dict(**small, num_layers=1, roi_size=2),
        detr_encoder_config=dict(**small, num_layers=1),
        detr_decoder_config=dict(**small, num_layers=2, num_queries=num_queries),
        mask_decoder_config=dict(hidden_size=32, num_attention_heads=2),
    )
    tracker = dict(
        model_type="sam3_tracker_video", vision_config=vision, image_size=image_size,
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=14, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name.lower():  # LayerNorm / GroupNorm keep their identity start
                param.copy_(torch.randn(param.shape, generator=gen) * WEIGHT_STD)


def _save_processor(out_dir: Path, image_size: int) -> None:
    from transformers import Sam3ImageProcessor, Sam3Processor

    from .tokenizers import clip_tokenizer

    tokenizer = clip_tokenizer(out_dir)
    mask = 4 * (image_size // 14)
    image_processor = Sam3ImageProcessor(size={"height": image_size, "width": image_size},
                                         mask_size={"height": mask, "width": mask})
    Sam3Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)


def tiny_sam3(out_dir: Union[str, Path], seed: int = 0, image_size: int = IMAGE_SIZE) -> Path:
    """A random tiny SAM 3 (detector + tracker, `facebook/sam3`'s layout) saved to `out_dir`."""
    from safetensors.torch import save_file
    from transformers import Sam3VideoModel

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_sam3_config(image_size)
    torch.manual_seed(seed)
    model = Sam3VideoModel(config).eval()
    _randomize(model, seed)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    _save_processor(out_dir, image_size)
    return out_dir


def tiny_sam3_detector(out_dir: Union[str, Path], seed: int = 0, image_size: int = IMAGE_SIZE) -> Path:
    """A random tiny concept model only (`Sam3Model`, model_type "sam3": no tracker) saved to `out_dir`."""
    from transformers import Sam3Model

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    model = Sam3Model(tiny_sam3_config(image_size).detector_config).eval()
    _randomize(model, seed)
    model.save_pretrained(out_dir)
    _save_processor(out_dir, image_size)
    return out_dir

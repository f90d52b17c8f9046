"""Builders of the reference implementations (segment_anything, MobileSAM) with grounded's dimensions,
and modules loaded by file path from the reference wheels bin/env keeps (never installed)."""

import importlib.util
import sys
import zipfile
from functools import partial
from pathlib import Path

import torch

from grounded.sam.config import SamConfig


def reference_sam(config: SamConfig, state_dict=None):
    """segment_anything's Sam (ViT) or mobile_sam's Sam (TinyViT) with the same dimensions,
    optionally loaded (strictly) with a grounded/official state dict."""
    if config.encoder == "vit":
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

        encoder = ImageEncoderViT(
            depth=config.encoder_depth, embed_dim=config.encoder_embed_dim, img_size=config.image_size,
            mlp_ratio=config.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads, patch_size=config.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes, window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        )
    else:
        from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

        encoder = TinyViT(
            img_size=config.image_size, in_chans=3, num_classes=config.tiny_num_classes,
            embed_dims=list(config.tiny_embed_dims), depths=list(config.tiny_depths),
            num_heads=list(config.tiny_num_heads), window_sizes=list(config.tiny_window_sizes),
            mlp_ratio=config.mlp_ratio, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
            mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
        )
        if config.prompt_embed_dim != 256:  # MobileSAM hard-codes a 256-channel neck
            from segment_anything.modeling.common import LayerNorm2d

            d = config.prompt_embed_dim
            encoder.neck = torch.nn.Sequential(
                torch.nn.Conv2d(config.tiny_embed_dims[-1], d, 1, bias=False), LayerNorm2d(d),
                torch.nn.Conv2d(d, d, 3, padding=1, bias=False), LayerNorm2d(d),
            )
    emb = config.image_embedding_size
    model = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim, image_embedding_size=(emb, emb),
            input_image_size=(config.image_size, config.image_size), mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth, embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim, num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim, iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(config.pixel_mean),
        pixel_std=list(config.pixel_std),
    )
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    # MobileSAM's TinyViT attention caches its bias table when switched to eval mode.
    return model.eval()


def module_from_reference_wheel(wheel_name: str, member: str, folder: Path, sha256: str = ""):
    """`member` (a .py file) of the wheel bin/env keeps in the environment's reference-wheels/, extracted
    into `folder` and loaded by file path; with `sha256`, the wheel is checked against it first."""
    import hashlib

    wheel = Path(sys.prefix) / "reference-wheels" / wheel_name
    assert wheel.is_file(), f"{wheel} is missing: run bin/env (it downloads and verifies the reference wheels)"
    assert not sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest() == sha256, f"{wheel} is not the verified wheel"
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(member, folder)
    spec = importlib.util.spec_from_file_location(Path(member).stem, folder / member)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Tiny random models for tests and offline smoke runs, built from configs, in one place.

SAM here; every other backend in a module of its own (`grounded.testing.<backend>`), each building
its model from a config, saving it, and loading it back through the real `from_pretrained` paths.
`hf_cache.py` lays a saved folder out as a Hugging Face hub cache entry; `tokenizers.py` builds
tokenizers offline."""

import torch

from ..sam.build import build_sam
from ..sam.config import SamConfig


def tiny_sam_config(encoder: str = "vit", image_size: int = 128) -> SamConfig:
    """A SAM small enough for a unit test: the real architecture with few, narrow layers."""
    if encoder == "vit":
        return SamConfig(
            encoder="vit", image_size=image_size, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
            encoder_global_attn_indexes=(1,), window_size=3, prompt_embed_dim=32, mask_in_chans=8,
            decoder_depth=2, decoder_num_heads=8, decoder_mlp_dim=64, iou_head_hidden_dim=32,
        )
    if encoder == "tiny_vit":
        # TinyViT is tied to 1024-pixel inputs, and MobileSAM picks the last merge stride by width (320).
        return SamConfig(
            encoder="tiny_vit", image_size=1024, tiny_embed_dims=(16, 24, 32, 320), tiny_depths=(1, 1, 1, 1),
            tiny_num_heads=(2, 2, 2, 4), tiny_window_sizes=(7, 7, 14, 7), tiny_num_classes=10,
            prompt_embed_dim=32, mask_in_chans=8, decoder_depth=2, decoder_num_heads=8, decoder_mlp_dim=64,
            iou_head_hidden_dim=32,
        )
    raise ValueError(f"unknown encoder {encoder!r}")


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter and float buffer random values (including the relative-position tables,
    attention biases and batch-norm statistics that start at zero or one), so parity tests see
    every term."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Only what a checkpoint holds: non-persistent buffers (pixel mean/std) are configuration.
        for name, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)
    return model


def tiny_sam(encoder: str = "vit", image_size: int = 128, seed: int = 0):
    """A random tiny SAM (eval mode)."""
    return randomize_(build_sam(tiny_sam_config(encoder, image_size)), seed).eval()

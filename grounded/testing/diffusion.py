"""Tiny random Stable Diffusion inpainting pipelines (SD 1.x-style and SDXL), built from configs
with CLIP's real tokenizer and saved with `save_pretrained`, for loading back through diffusers'
real `from_pretrained` (by folder, or by hub id from a temporary Hugging Face cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .tokenizers import clip_tokenizer


def _vae():
    from diffusers import AutoencoderKL

    # 4 blocks: the VAE downsamples by 8, as a real one does (multiples of 8 matter).
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[8, 8, 16, 16],
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         layers_per_block=1, norm_num_groups=8, sample_size=32)


def _text_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, **extra)


def tiny_sd_inpaint(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """A random SD inpainting pipeline (UNet with 9 input channels) saved to `out_dir`."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32,
                                attention_head_dim=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    pipe = StableDiffusionInpaintPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config()), tokenizer=clip_tokenizer(out_dir / "_tok"),
        unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(out_dir)
    _drop(out_dir / "_tok")
    return out_dir


def tiny_sdxl_inpaint(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """A random SDXL inpainting pipeline (two text encoders, text-time conditioning) saved to `out_dir`."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    # add_time_ids: 6 numbers (sizes, crop, target size) x 8 + the pooled text projection (32)
    unet = UNet2DConditionModel(sample_size=8, in_channels=9, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=64,
                                attention_head_dim=(2, 4), use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=6 * 8 + 32,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    tokenizer = clip_tokenizer(out_dir / "_tok")
    pipe = StableDiffusionXLInpaintPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(projection_dim=32)),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         steps_offset=1, timestep_spacing="leading"),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(out_dir)
    _drop(out_dir / "_tok")
    return out_dir


def _drop(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)

"""Stable Diffusion inpainting through diffusers: SD 1.5 / 2 inpainting
(`StableDiffusionInpaintPipeline`) and SDXL inpainting (`StableDiffusionXLInpaintPipeline`),
chosen from the model's own `model_index.json`; by hub id (the Hugging Face cache first, see
`grounded.hub`) or a local folder.

    pipe = load_inpaint_pipeline("path/to/sd-inpaint", device="cuda", dtype=torch.float16)
    out = inpaint(pipe, image, mask, "a monkey", steps=30, seed=0)

The image goes in at its size rounded to a multiple of 8 (what the VAE needs) and comes back at
its own size; the original is composited back outside the (dilated) mask, so only the masked
region changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .local import as_mask, composite, edit_region

SCHEDULERS = {
    "default": None,
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "dpm++_sde": "DPMSolverSinglestepScheduler",
    "lms": "LMSDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
    "ddpm": "DDPMScheduler",
    "heun": "HeunDiscreteScheduler",
}
PIPELINE_CLASSES = {
    "StableDiffusionInpaintPipeline": "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline": "StableDiffusionInpaintPipeline",   # an inpainting UNet saved as a plain SD pipeline
    "StableDiffusionXLInpaintPipeline": "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLInpaintPipeline",
}


class InpaintModelNotFound(FileNotFoundError):
    """No inpainting model where the name points; the message lists what was tried."""


def pipeline_folder(name: str) -> Path:
    """The diffusers pipeline folder `name` names: the folder itself, or the snapshot of hub id
    `name` from the Hugging Face cache, downloaded only when the hub answers (`grounded.hub`)."""
    from ..hub import from_cache_or_hub, is_hub_id

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InpaintModelNotFound(f"{path} is not a diffusers pipeline folder (no model_index.json in it)")
        return path
    if path.exists():
        raise InpaintModelNotFound(f"{path} is a file; give a diffusers pipeline folder or hub id "
                                   "(single-file .safetensors checkpoints are not supported here)")
    if not is_hub_id(name):
        raise InpaintModelNotFound(f"inpainting model not found: {name!r} is neither a folder nor a hub id")
    from diffusers import DiffusionPipeline

    tried = [f"local folder {path.resolve()} (does not exist)"]
    folder = from_cache_or_hub(f"Hugging Face hub id {name!r}",
                               lambda: Path(DiffusionPipeline.download(name, local_files_only=True)),
                               lambda: Path(DiffusionPipeline.download(name)), tried, name)
    if folder is None:
        raise InpaintModelNotFound(f"inpainting model {name!r} not found. Tried:\n  - " + "\n  - ".join(tried)
                                   + f"\nDownload it where there is network (`hf download {name}`) or give a local folder")
    return folder


def load_inpaint_pipeline(name: str, device: str = "cpu", dtype: Any = None):
    """The diffusers inpainting pipeline for `name` (SD 1.x/2.x or SDXL, from its model_index.json),
    without a safety checker, on `device` in `dtype` (None: float32, whatever the files hold)."""
    import diffusers
    import torch

    folder = pipeline_folder(name)
    index = json.loads((folder / "model_index.json").read_text())
    kind = index.get("_class_name", "")
    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"{name} is a {kind or 'unknown'} pipeline; inpainting needs a Stable Diffusion (1.x/2.x) "
                         f"or SDXL inpainting model ({', '.join(sorted(set(PIPELINE_CLASSES.values())))})")
    cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    # dtype always given: transformers 5 loads the text encoders in their saved dtype otherwise
    kwargs = {"torch_dtype": dtype or torch.float32}
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(folder, **kwargs)
    channels = pipe.unet.config.in_channels
    if channels != 9:
        raise ValueError(f"{name}'s UNet takes {channels} input channels, not an inpainting UNet's 9 (latents, mask, "
                         "masked-image latents): use an inpainting checkpoint, e.g. a *-inpainting model")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def set_scheduler(pipe, scheduler: str) -> None:
    """Swap the pipeline's scheduler for another diffusers scheduler built from the same config."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {list(SCHEDULERS)}")
    if SCHEDULERS[scheduler] is None:
        return
    import diffusers

    cls = getattr(diffusers, SCHEDULERS[scheduler])
    if type(pipe.scheduler) is not cls:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)


def round8(size: int) -> int:
    return max(8, int(round(size / 8.0)) * 8)


def inpaint(pipe, image: np.ndarray, mask: np.ndarray, prompt: str, *, negative_prompt: Optional[str] = None,
            steps: int = 30, guidance: float = 7.5, strength: float = 1.0, seed: Optional[int] = 0,
            scheduler: str = "default", dilate_px: int = 8, feather_px: int = 4, max_side: Optional[int] = None) -> np.ndarray:
    """`prompt` painted into the (dilated) mask of `image` (HxWx3 uint8); pixels outside the
    dilated mask are the original's. The model runs at the size rounded to multiples of 8 (or
    scaled so its longest side is `max_side`); the result is resized back."""
    import torch
    from PIL import Image

    if not prompt or not prompt.strip():
        raise ValueError("inpainting needs a prompt: what to paint into the mask")
    height, width = image.shape[:2]
    mask = as_mask(mask, (height, width))
    if not mask.any():
        raise ValueError("the mask to inpaint is empty: nothing was found to edit")
    region, alpha = edit_region(mask, dilate_px, feather_px)
    scale = 1.0 if not max_side else min(1.0, max_side / max(height, width))
    h8, w8 = round8(height * scale), round8(width * scale)
    set_scheduler(pipe, scheduler)
    device = pipe.device
    generator = None if seed is None else torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(int(seed))
    model_image = Image.fromarray(image).resize((w8, h8), Image.LANCZOS)
    model_mask = Image.fromarray(region.astype(np.uint8) * 255).resize((w8, h8), Image.NEAREST)
    result = pipe(prompt=prompt, negative_prompt=negative_prompt, image=model_image, mask_image=model_mask,
                  height=h8, width=w8, num_inference_steps=int(steps), guidance_scale=float(guidance),
                  strength=float(strength), generator=generator, output_type="np").images[0]
    painted = np.clip(np.rint(np.asarray(result, np.float32) * 255.0), 0, 255).astype(np.uint8)
    if painted.shape[:2] != (height, width):
        painted = np.asarray(Image.fromarray(painted).resize((width, height), Image.LANCZOS))
    return composite(image, painted, alpha)

"""The MAE paper's reconstruction figure: per image, the masked input | the reconstruction (with the
visible patches put back, as the paper shows it) | the original.

With the per-patch normalised loss the network predicts each masked patch up to its mean and
variance; to show pixels, the prediction is mapped back with the original patch's own mean and
variance (the usual way to visualise such a model; the loss never sees them)."""

import os
from pathlib import Path
from typing import Optional

import torch
from PIL import Image, ImageDraw

from .data import denormalise
from .masking import patchify, unpatchify

MASKED_GREY = 0.0  # masked patches are shown at the normalised mean (mid grey)


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, mask_ratio: float, norm_pix_loss: bool,
                generator: Optional[torch.Generator] = None):
    """(masked input, reconstruction with visible patches pasted, original), each B x C x H x W normalised."""
    was_training = model.training
    model.eval()
    try:
        out = model(images, mask_ratio, generator=generator)
    finally:
        model.train(was_training)
    p = model.config.patch_size
    patches = patchify(images.float(), p)
    pred = out.pred.float()
    if norm_pix_loss:
        mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    mask = out.mask[..., None]
    size = images.shape[-2:]
    masked = unpatchify(patches * (1 - mask) + MASKED_GREY * mask, p, *size)
    pasted = unpatchify(patches * (1 - mask) + pred * mask, p, *size)
    return masked, pasted, images.float()


def reconstruction_figure(model, images: torch.Tensor, mask_ratio: float, norm_pix_loss: bool,
                          generator: Optional[torch.Generator] = None, scale: int = 2, title: str = "") -> Image.Image:
    """One row per image: masked | reconstruction + visible | original, each upscaled `scale` times."""
    columns = reconstruct(model, images, mask_ratio, norm_pix_loss, generator)
    size = images.shape[-1] * scale
    gap, header = 4, 18
    width = 3 * size + 4 * gap
    figure = Image.new("RGB", (width, header + len(images) * (size + gap) + gap), "white")
    draw = ImageDraw.Draw(figure)
    for k, label in enumerate(("masked", "reconstruction + visible", "original")):
        draw.text((gap + k * (size + gap), 3), label, fill="black")
    if title:
        draw.text((width - gap - 7 * len(title), 3), title, fill="grey")
    for row in range(len(images)):
        for k, column in enumerate(columns):
            tile = Image.fromarray(denormalise(column[row])).resize((size, size), Image.NEAREST)
            figure.paste(tile, (gap + k * (size + gap), header + row * (size + gap)))
    return figure


def save_figure(figure: Image.Image, path) -> None:
    """Written beside, then renamed: a viewer never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    figure.save(tmp, format="PNG")
    os.replace(tmp, path)


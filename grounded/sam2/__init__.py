"""SAM 2 / 2.1 for images: Hiera-T/S/B+/L encoders with the FPN neck, SAM's prompt encoder and SAM 2's
mask decoder, the official checkpoints and Hugging Face `Sam2Model` folders, and drop-ins for the
official `SAM2ImagePredictor` and `SAM2AutomaticMaskGenerator`: `from grounded.sam2 import
SAM2ImagePredictor` replaces `from sam2.sam2_image_predictor import SAM2ImagePredictor`."""

from .build import (
    build_sam2,
    build_sam2_hiera_base_plus,
    build_sam2_hiera_large,
    build_sam2_hiera_small,
    build_sam2_hiera_tiny,
    from_pretrained,
    load_sam_or_sam2,
    save_pretrained,
)
from .config import OFFICIAL_CONFIGS, Sam2Config
from .model import Sam2
from .predictor import SAM2ImagePredictor, predictor_for

__all__ = [
    "OFFICIAL_CONFIGS", "SAM2AutomaticMaskGenerator", "SAM2ImagePredictor", "Sam2", "Sam2Config", "build_sam2",
    "build_sam2_hiera_base_plus", "build_sam2_hiera_large", "build_sam2_hiera_small", "build_sam2_hiera_tiny",
    "from_pretrained", "load_sam_or_sam2", "predictor_for", "save_pretrained",
]


def __getattr__(name):
    if name == "SAM2AutomaticMaskGenerator":  # lazily: it pulls in torchvision's NMS
        from .automatic import SAM2AutomaticMaskGenerator

        return SAM2AutomaticMaskGenerator
    raise AttributeError(name)

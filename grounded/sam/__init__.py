"""The Segment Anything Model, complete: ViT-B/L/H and MobileSAM's TinyViT encoders, prompt encoder,
mask decoder, predictor. `from grounded.sam import sam_model_registry, SamPredictor` is a drop-in
for `from segment_anything import ...`."""

from .build import (
    CheckpointError,
    build_sam,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
    build_sam_vit_t,
    from_pretrained,
    sam_model_registry,
    save_pretrained,
)
from .config import SamConfig
from .model import Sam
from .predictor import PromptError, SamPredictor

__all__ = [
    "CheckpointError", "PromptError", "Sam", "SamConfig", "SamPredictor", "build_sam", "build_sam_vit_b",
    "build_sam_vit_h", "build_sam_vit_l", "build_sam_vit_t", "from_pretrained", "sam_model_registry",
    "save_pretrained",
]


def __getattr__(name):
    if name == "SamAutomaticMaskGenerator":  # lazily: it pulls in torchvision's NMS
        from .automatic import SamAutomaticMaskGenerator

        return SamAutomaticMaskGenerator
    raise AttributeError(name)

"""CLIP: text and image embeddings, and scores of masked crops against texts, through open_clip or
transformers (see `grounded.clip.model`). open_clip and transformers are imported only when a
model is loaded."""

from .crops import CLIP_MEAN_RGB, mask_box, masked_crop, masked_crops  # noqa: F401
from .model import BACKENDS, ClipModel, check_text, clip_backend, load_clip  # noqa: F401

"""Reading inputs with validation (and, beside them, the writers of results)."""

from grounded.io.image import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageTooLargeError,
    load_image,
    load_image_with_info,
    percentile_to_uint8,
    scale_to_uint8,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageError",
    "ImageTooLargeError",
    "load_image",
    "load_image_with_info",
    "percentile_to_uint8",
    "scale_to_uint8",
]

"""Reading images into HxWx3 uint8 RGB arrays, with errors that say which file and what is wrong.

`load_image(source)` takes a path, bytes, a binary file object, a PIL image or a numpy array.
Choices made here, so every caller gets the same pixels:
- EXIF orientation is applied, so photos come out upright.
- Alpha is composited onto black (rgb * alpha): transparent pixels often hold arbitrary colours,
  and black is what a premultiplied image shows; for opaque images nothing changes.
- Images deeper than 8 bits (16-bit, 32-bit int, float) are scaled by their own min..max to
  0..255, not by their bit depth: a 12-bit microscope image in a 16-bit container would
  otherwise come out almost black. A constant image becomes all zeros. Float arrays already in
  [0, 1] are taken as fractions and multiplied by 255.
- Multi-frame files (animated GIF, multi-page TIFF) give their first frame; `load_image_with_info`
  says how many frames there were.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 300_000_000

# PIL reads its pixel limit from a module global, which _open_with_limit lifts while a header is
# parsed. The lock stops two load_image calls racing over it; PIL calls made elsewhere in that
# instant go unchecked, an accepted cost of a limit that can be set per call.
_PIL_LIMIT_LOCK = threading.Lock()
# What a broken file can make PIL raise while decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError)


class ImageError(ValueError):
    """An image that cannot be read, or an array that is not an image; the message says why."""


class ImageTooLargeError(ImageError):
    """More pixels than `max_pixels` (a guard against decompression bombs)."""


def load_image(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An HxWx3 uint8 RGB array from a path, bytes, binary file object, PIL image or numpy array."""
    return load_image_with_info(source, max_pixels=max_pixels)[0]


def load_image_with_info(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
                         ) -> tuple[np.ndarray, dict]:
    """Like `load_image`, plus a dict: `source` (a name for messages), `format` (e.g. "PNG"),
    `original_mode` (PIL mode, or dtype and shape), `frames`, `exif_rotated`, `had_alpha`."""
    if isinstance(source, np.ndarray):
        rgb, had_alpha = _array_to_rgb(source, "array")
        info = dict(source="<array>", format=None, original_mode=f"{source.dtype} {source.shape}",
                    frames=1, exif_rotated=False, had_alpha=had_alpha)
        return rgb, info
    if isinstance(source, Image.Image):
        # Use the frame the caller has selected; seeking would change their object.
        return _pil_to_rgb(source, "<PIL image>", max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(bytes(source), "<bytes>", max_pixels)
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<file object>"))
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError(f"{name}: file object must be opened in binary mode")
        return _decode(data, name, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return _decode(_read_file(path), str(path), max_pixels)
    raise TypeError(f"cannot load an image from {type(source).__name__}; "
                    "give a path, bytes, a file object, a PIL image or a numpy array")


def percentile_to_uint8(arr: np.ndarray, low: float = 1, high: float = 99.8) -> np.ndarray:
    """Map the `low`..`high` percentiles of `arr` to 0..255 (clipping outside), as uint8.

    The usual display stretch for fluorescence and other high-dynamic-range images, where a few
    hot pixels would otherwise squash everything else into the dark end.
    """
    values = np.asarray(arr, dtype=np.float64)
    if values.size == 0:
        raise ImageError("cannot stretch an empty array")
    lo, hi = np.nanpercentile(values, [low, high])
    if not hi > lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.nan_to_num(values, nan=lo) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map the array's own finite min..max to 0..255 as uint8 (all zeros if it is constant)."""
    values = np.asarray(arr, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = finite.min(), finite.max()
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) / (hi - lo)
    return np.round(scaled * 255).astype(np.uint8)


# ---- files ------------------------------------------------------------------------------------

def _read_file(path: Path) -> bytes:
    if not path.exists():
        if path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)")
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not data:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    return data


def _looks_like_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _decode(data: bytes, name: str, max_pixels: int | None) -> tuple[np.ndarray, dict]:
    if not data:
        raise ImageError(f"{name}: no data (0 bytes)")
    pil_error = None
    try:
        img = _open_with_limit(data, name, max_pixels)
        if not _is_deep_color_tiff(img):
            return _pil_to_rgb(img, name, max_pixels)
    except ImageTooLargeError:
        raise
    except ImageError as e:
        # PIL cannot read some valid TIFFs (e.g. multi-sample 16-bit); tifffile can.
        if not _looks_like_tiff(data):
            raise
        pil_error = e
    try:
        return _decode_tiff(data, name, max_pixels)
    except ImageError:
        raise
    except Exception as tiff_error:  # noqa: BLE001 - report both readers' reasons
        before = f"{pil_error}; " if pil_error else f"{name}: "
        raise ImageError(f"{before}tifffile could not read it ({tiff_error})") from None


def _is_deep_color_tiff(img: Image.Image) -> bool:
    # PIL reads 16-bit RGB TIFFs by dropping the low byte (scaling by bit depth); tifffile gives
    # the full values, which are then scaled by their own range like every other deep image.
    if img.format != "TIFF" or img.mode.startswith("I") or img.mode == "F":
        return False
    bits = img.tag_v2.get(258, 8)
    return max(bits if isinstance(bits, tuple) else (bits,)) > 8


def _open_with_limit(data: bytes, name: str, max_pixels: int | None) -> Image.Image:
    # Our own pixel limit replaces PIL's (whose hard error sits at ~179 MP) while the header is
    # parsed; the size is then checked here, before any pixel is decoded.
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image, or a format Pillow cannot read "
                             f"(file starts with {data[:12]!r})") from None
        except _DECODE_ERRORS as e:
            raise ImageError(f"{name}: corrupt or truncated image header ({e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    _check_pixels(img.size, name, max_pixels)
    return img


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                         f"{max_pixels} pixels (possible decompression bomb; raise max_pixels to allow it)")


def _decode_tiff(data: bytes, name: str, max_pixels: int | None) -> tuple[np.ndarray, dict]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages[0]
        _check_pixels((page.imagewidth, page.imagelength), name, max_pixels)
        arr = page.asarray()
        axes = page.axes
        frames = len(tif.pages)
    if axes.startswith("S") and arr.ndim == 3:  # planar storage: samples first
        arr = np.moveaxis(arr, 0, -1)
    rgb, had_alpha = _array_to_rgb(arr, name)
    info = dict(source=name, format="TIFF (tifffile)", original_mode=f"{arr.dtype} {arr.shape}",
                frames=frames, exif_rotated=False, had_alpha=had_alpha)
    return rgb, info


# ---- PIL images -------------------------------------------------------------------------------

def _pil_to_rgb(img: Image.Image, name: str, max_pixels: int | None) -> tuple[np.ndarray, dict]:
    _check_pixels(img.size, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()  # decode every pixel now, so truncated data fails here and not later
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name}: {e}") from None
    except _DECODE_ERRORS as e:
        raise ImageError(f"{name}: corrupt or truncated image data ({e})") from None
    info = dict(source=name, format=img.format, original_mode=img.mode,
                frames=getattr(img, "n_frames", 1), exif_rotated=False, had_alpha=False)

    orientation = _exif_orientation(img)
    if orientation not in (None, 1):
        try:
            img = ImageOps.exif_transpose(img)
            info["exif_rotated"] = True
        except Exception:  # noqa: BLE001 - broken metadata should not cost the pixels
            pass

    mode = img.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
        img = img.convert(mode)
    elif mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"

    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy(), info
    if mode in ("1", "L"):
        return _gray_to_rgb(np.asarray(img.convert("L"))), info
    if mode in ("RGBA", "LA", "La", "RGBa"):
        info["had_alpha"] = True
        arr = np.asarray(img.convert("RGBA"))
        return _over_black(arr[..., :3], arr[..., 3].astype(np.float64) / 255), info
    if mode.startswith("I") or mode == "F":
        return _gray_to_rgb(scale_to_uint8(np.asarray(img))), info
    try:  # CMYK, YCbCr, LAB, HSV: PIL knows how to get RGB from each
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy(), info
    except ValueError as e:
        raise ImageError(f"{name}: cannot convert image mode {mode} to RGB ({e})") from None


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - unreadable EXIF means: no orientation
        return None


# ---- arrays -----------------------------------------------------------------------------------

def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    if gray.ndim == 3:
        gray = gray[..., 0]
    return np.repeat(gray[..., None], 3, axis=-1)


def _over_black(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.round(color.astype(np.float64) * alpha[..., None]).astype(np.uint8)


def is_unit_float_rgb(image) -> bool:
    """Whether `image` is an HxWx3 float array of finite fractions in [0, 1], the form SAM 2's
    official predictor takes unrounded (and `load_image` rounds to 8 bits without rescaling)."""
    return (isinstance(image, np.ndarray) and image.dtype.kind == "f" and image.ndim == 3 and image.shape[2] == 3
            and image.size > 0 and bool(np.isfinite(image).all()) and image.min() >= 0 and image.max() <= 1)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.min() >= 0 and finite.max() <= 1:
            return np.round(np.nan_to_num(arr.astype(np.float64)) * 255).astype(np.uint8)
    return scale_to_uint8(arr)


def _alpha_fraction(alpha: np.ndarray) -> np.ndarray:
    # Alpha means "fraction of full scale" for its dtype, so here the bit depth is the right scale.
    if alpha.dtype.kind in "ui":
        return alpha.astype(np.float64) / np.iinfo(alpha.dtype).max
    return np.clip(np.nan_to_num(alpha.astype(np.float64)), 0, 1)


def _array_to_rgb(arr: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """(HxWx3 uint8, had_alpha) from an HxW, HxWx1, HxWx3 or HxWx4 array."""
    described = f"{name}: array of shape {arr.shape} and dtype {arr.dtype}"
    if arr.dtype == bool:
        raise ImageError(f"{described} is boolean (a mask?); convert it, e.g. arr.astype(np.uint8) * 255")
    if arr.dtype.kind not in "uif":
        raise ImageError(f"{described}: expected an integer or float dtype")
    if arr.size == 0:
        raise ImageError(f"{described} is empty")
    if arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise ImageError(f"{described} looks channels-first; expected HxWxC (use np.moveaxis(arr, 0, -1))")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (1, 3, 4)):
        raise ImageError(f"{described}: expected HxW, HxWx1, HxWx3 or HxWx4")
    if arr.dtype.kind == "f" and np.isnan(arr).all():
        raise ImageError(f"{described} is all NaN")
    if arr.ndim == 2 or arr.shape[-1] == 1:
        return _gray_to_rgb(_to_uint8(arr)), False
    if arr.shape[-1] == 3:
        return np.ascontiguousarray(_to_uint8(arr)), False
    return _over_black(_to_uint8(arr[..., :3]), _alpha_fraction(arr[..., 3])), True

"""`Sam.threshold_masks`: `Sam.postprocess_masks(low_res, input_size, original_size) > threshold`
without building the full-resolution logits.

The reference upsamples each 256x256 mask to the padded 1024x1024 input, crops the padding, and
resizes to the image size: two bilinear passes and a float intermediate of 4 MB per mask, which on a
CPU costs more than the decoder that made the mask. Both passes take convex combinations, so an
output pixel is a convex combination of a small window of low-res logits (at most 3x3). Where that
whole window lies clearly above (or below) the threshold, so does the pixel; a window min and max
over the 256x256 grid decides almost every pixel. Only pixels whose window straddles the threshold,
a thin band along each contour, are evaluated: through the same two passes, with the reference's own
indices and weights (`axis_map`, read off F.interpolate by upsampling one-hot rows) combined in the
CPU kernel's order. So a pixel can differ from the reference only when its logit lies within a float
rounding of the threshold. With numba installed, both steps run as compiled loops (kernels.py)
that make the same decisions bit for bit. Chunks of masks run side by side on the wing's workers.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..model import Sam
from . import kernels as compiled
from .common import inference_applies
from .threads import map_chunks

_PIXELS_PER_CHUNK = 1 << 22  # 16 masks of 512x512: 1.08x faster than 8 here, temporaries still in L3


@dataclass(frozen=True)
class AxisMap:
    """How one axis of `in_size` input pixels maps onto `out_size` output pixels in F.interpolate."""

    cell: torch.Tensor  # (out,) input index i0 of each output pixel (it lies between i0 and i0 + 1)
    w0: torch.Tensor  # (out,) weight of input i0
    w1: torch.Tensor  # (out,) weight of input min(i0 + 1, in_size - 1)
    start: torch.Tensor  # (in,) first output pixel of each cell
    count: torch.Tensor  # (in,) number of output pixels of each cell


@lru_cache(maxsize=16)
def axis_map(in_size: int, out_size: int, device: torch.device) -> AxisMap:
    # Upsample one-hot rows with the reference's call: column y of the result holds the weight
    # F.interpolate gives each input row for output row y, bit for bit.
    probe = torch.eye(in_size, device=device)[:, None, :, None].expand(-1, -1, -1, 2)
    weights = F.interpolate(probe, (out_size, 2), mode="bilinear", align_corners=False)[:, 0, :, 0]
    cell = (weights != 0).to(torch.uint8).argmax(dim=0)  # the first input with a nonzero weight
    outputs = torch.arange(out_size, device=device)
    w0 = weights[cell, outputs]
    nxt = (cell + 1).clamp(max=in_size - 1)
    # At the last input both weights fall on one row: F.interpolate stored their sum.
    w1 = torch.where(nxt != cell, weights[nxt, outputs], torch.zeros_like(w0))
    count = torch.bincount(cell, minlength=in_size)
    return AxisMap(cell, w0, w1, torch.cumsum(count, 0) - count, count)


@dataclass(frozen=True)
class Window:
    """Which low-res inputs one axis of output pixels depends on through both passes."""

    first: torch.Tensor  # (out,) first low-res index with a nonzero weight (nondecreasing)
    span: int  # the widest window, in low-res pixels
    start: torch.Tensor  # (low,) first output pixel whose window starts at each low-res index
    count: torch.Tensor  # (low,) how many output pixels' windows start there


@lru_cache(maxsize=32)
def composed_window(low: int, padded: int, crop: int, out: int, device: torch.device) -> Window:
    # One-hot rows through the reference's two resizes: entry (i, y) is input i's weight in output y.
    probe = torch.eye(low, device=device)[:, None, :, None].expand(-1, -1, -1, 2)
    up = F.interpolate(probe, (padded, 2), mode="bilinear", align_corners=False)[:, :, :crop]
    weights = F.interpolate(up, (out, 2), mode="bilinear", align_corners=False)[:, 0, :, 0]
    used = (weights != 0).to(torch.uint8)
    first = used.argmax(dim=0)
    last = low - 1 - used.flip(0).argmax(dim=0)
    count = torch.bincount(first, minlength=low)
    return Window(first, int((last - first).max()) + 1, torch.cumsum(count, 0) - count, count)


def two_pass_logits(low_res: torch.Tensor, padded_size: int, input_size: Tuple[int, ...],
                    original_size: Tuple[int, ...]) -> torch.Tensor:
    """The reference's full-resolution logits: upsample to the padded input, crop, resize."""
    masks = F.interpolate(low_res, (padded_size, padded_size), mode="bilinear", align_corners=False)
    masks = masks[..., : int(input_size[0]), : int(input_size[1])]
    return F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)


def threshold_upsampled(low_res: torch.Tensor, padded_size: int, input_size: Tuple[int, int],
                        original_size: Tuple[int, int], threshold: float, kernels=None, workers: int = 1) -> torch.Tensor:
    """Bool N x M x H x W: the masks of N x M x h x w float32 CPU low-res logits at the original size
    (H, W), equal to thresholding `Sam.postprocess_masks`. kernels: kernels.load(), or None for torch
    operations; chunks of masks on `workers` threads."""
    n, m, h, w = low_res.shape
    out_h, out_w = (int(s) for s in original_size)
    crop_h, crop_w = (int(s) for s in input_size)
    device = low_res.device
    logits = low_res.reshape(n * m, 1, h, w).float()
    rows = composed_window(h, padded_size, crop_h, out_h, device)
    cols = composed_window(w, padded_size, crop_w, out_w, device)

    if logits.numel():
        lo, hi = logits.aminmax()
        # Two convex combinations of floats are off by a few units of 6e-8 of the largest value.
        margin = 1e-6 * max(abs(float(lo)), abs(float(hi))) + 1e-5 * (1 + abs(threshold))
    else:
        margin = 0.0
    steps = (
        axis_map(h, padded_size, device), axis_map(w, padded_size, device),
        axis_map(crop_h, out_h, device), axis_map(crop_w, out_w, device),
    )
    masks = torch.empty(n * m, out_h, out_w, dtype=torch.bool, device=device)
    # A few masks at a time keep every temporary in cache.
    chunk = max(1, _PIXELS_PER_CHUNK // (out_h * out_w))
    row_words = next(t for t in (torch.int64, torch.int32, torch.int16, torch.uint8) if out_w % t.itemsize == 0)
    if kernels is not None:  # (cell, w0, w1) of rows, then columns, for each pass
        exact_maps = tuple(getattr(m, name).numpy() for m in steps for name in ("cell", "w0", "w1"))

    def threshold_chunk(first: int) -> None:
        part = logits[first : first + chunk, 0]
        out = masks[first : first + chunk]
        if kernels is not None:  # the same decisions and values in compiled loops (kernels.py)
            part_array = part.contiguous().numpy()
            unsure = np.empty(part.shape, dtype=np.bool_)
            # float32 bounds: torch compares a float32 tensor with a Python float in float32 too
            n_unsure = kernels.threshold_clear(part_array, rows.first.numpy(), cols.first.numpy(),
                                               rows.span, cols.span, np.float32(threshold + margin),
                                               np.float32(threshold - margin), out.numpy(), unsure)
        else:
            # Window extremes at each window start; replicate padding repeats the clamped last row/column.
            padded = F.pad(part[:, None], (0, cols.span - 1, 0, rows.span - 1), mode="replicate")[:, 0]
            above = _window_reduce(padded, rows.span, cols.span, torch.minimum) > threshold + margin
            unsure = _window_reduce(padded, rows.span, cols.span, torch.maximum) >= threshold - margin
            unsure &= ~above
            # Columns first, on the small grid; rows then copy whole output rows, as words of several bytes.
            widened = torch.gather(above, 2, cols.first.expand(above.shape[0], above.shape[1], -1))
            torch.index_select(widened.view(row_words), 1, rows.first, out=out.view(row_words))
            k, i, j = unsure.nonzero(as_tuple=True)
            n_unsure = k.numel()
        if n_unsure * 8 > part.numel():  # contours everywhere (noise): the dense passes are cheaper
            torch.gt(two_pass_logits(part[:, None], padded_size, input_size, original_size)[:, 0], threshold, out=out)
        elif n_unsure and kernels is not None:
            kernels.threshold_contours(part_array, unsure, rows.start.numpy(), rows.count.numpy(),
                                       cols.start.numpy(), cols.count.numpy(), exact_maps[:6], exact_maps[6:],
                                       crop_h, crop_w, np.float32(threshold), out.numpy())
        elif n_unsure:
            y, x, y_ok, x_ok = cell_pixels(rows, cols, i, j, out_h, out_w)
            real = y_ok[:, :, None] & x_ok[:, None, :]
            k = k[:, None, None].expand_as(real)[real]
            y, x = y[:, :, None].expand_as(real)[real], x[:, None, :].expand_as(real)[real]
            values = _two_pass_values(part, k, y, x, steps, crop_h, crop_w)
            out.view(-1)[(k * out_h + y) * out_w + x] = values > threshold
    map_chunks(threshold_chunk, range(0, n * m, chunk), workers)
    return masks.view(n, m, out_h, out_w)


def _window_reduce(x: torch.Tensor, span_r: int, span_c: int, op) -> torch.Tensor:
    """op over the span_r x span_c window starting at each pixel of the unpadded grid (a few
    elementwise passes; pooling kernels are several times slower here)."""
    h, w = x.shape[1] - span_r + 1, x.shape[2] - span_c + 1
    out = x[:, :h]
    for i in range(1, span_r):
        out = op(out, x[:, i : i + h])
    acc = out[:, :, :w]
    for j in range(1, span_c):
        acc = op(acc, out[:, :, j : j + w])
    return acc


def _two_pass_values(logits, k, y, x, steps, crop_h, crop_w) -> torch.Tensor:
    """The reference's full-resolution logits at pixels (k, y, x), pass by pass."""
    rows1, cols1, rows2, cols2 = steps
    h, w = logits.shape[1:]
    flat = logits.reshape(-1)
    base = k * (h * w)

    def padded_pixel(r, c):  # pass 1: the 1024x1024 upsampled logit at (r, c)
        r0, c0 = rows1.cell.take(r), cols1.cell.take(c)
        top, bottom = base + r0 * w, base + (r0 + 1).clamp(max=h - 1) * w
        c1 = (c0 + 1).clamp(max=w - 1)
        return _combine(flat.take(top + c0), flat.take(top + c1), flat.take(bottom + c0), flat.take(bottom + c1),
                        cols1.w0.take(c), cols1.w1.take(c), rows1.w0.take(r), rows1.w1.take(r))

    r0, c0 = rows2.cell.take(y), cols2.cell.take(x)
    r1, c1 = (r0 + 1).clamp(max=crop_h - 1), (c0 + 1).clamp(max=crop_w - 1)
    return _combine(padded_pixel(r0, c0), padded_pixel(r0, c1), padded_pixel(r1, c0), padded_pixel(r1, c1),
                    cols2.w0.take(x), cols2.w1.take(x), rows2.w0.take(y), rows2.w1.take(y))


def cell_pixels(rows, cols, i: torch.Tensor, j: torch.Tensor, out_h: int, out_w: int):
    """Output rows (n x R) and columns (n x C) of cells (i, j) on axes with `start` and `count` per
    input index (an AxisMap, or mask_upsample's Window), padded to the largest cell (the padding
    clamped into the image), and which rows and columns are the cell's."""
    r = torch.arange(int(rows.count.max()), device=i.device)
    c = torch.arange(int(cols.count.max()), device=i.device)
    y = rows.start[i][:, None] + r
    x = cols.start[j][:, None] + c
    y_ok, x_ok = r < rows.count[i][:, None], c < cols.count[j][:, None]
    return y.clamp(max=out_h - 1), x.clamp(max=out_w - 1), y_ok, x_ok


def _combine(a, b, c, d, wx0, wx1, wy0, wy1):
    # The CPU kernel's order: along x in both rows, then along y.
    return (a * wx0 + b * wx1) * wy0 + (c * wx0 + d * wx1) * wy1


class AcceleratedSam(Sam):
    """`Sam` whose `threshold_masks` thresholds without the full-resolution logits where the wing applies."""

    def threshold_masks(self, masks: torch.Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...],
                        threshold: Optional[float] = None) -> torch.Tensor:
        acceleration = self.acceleration
        path, kernels = "reference", None
        if inference_applies(masks):
            kernels = compiled.load() if acceleration.allows("masks/kernels") else None
            path = "kernels" if kernels is not None else "torch" if acceleration.allows("masks/torch") else "reference"
        acceleration.record(f"masks/{path}")
        if path == "reference":
            return super().threshold_masks(masks, input_size, original_size, threshold)
        threshold = self.mask_threshold if threshold is None else threshold
        return threshold_upsampled(masks, self.image_encoder.img_size, input_size, original_size, threshold, kernels,
                                   acceleration.workers)

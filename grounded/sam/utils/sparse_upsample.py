"""SAM's last mask upsampling step (bilinear, from the resized input to the image size), evaluated
only where a threshold decision needs it. Used by the automatic mask generator for images larger
than the model's input.

The generator needs three facts about each mask's full-resolution logits: how many pixels lie
above mask_threshold +- offset (the stability score), which pixels lie above mask_threshold (the
mask, as RLE) and the mask's box. Building the logits costs 4 bytes and several passes per image
pixel per mask: for a 4000x3000 image, most of the generator's time. But a bilinear output pixel
is a convex combination of the 2x2 input "cell" it falls in, so where all four corners of a cell
lie clearly on one side of a threshold, every output pixel of that cell does too. Only cells that
straddle a threshold, a thin band along each contour, are evaluated pixel by pixel, and RLE run
boundaries, which can only occur in or next to such cells, are found there.

Exactness: the per-axis interpolation weights are read off `F.interpolate` itself (by upsampling
one-hot rows), so band pixels use the reference's indices and weights, combined in the CPU
kernel's order: the same value to the last bit or within one float rounding. The "clear" decision
keeps a margin far above that rounding. So a pixel can differ from the reference only when its
logit lies within a rounding error of a threshold.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

_CELLS_PER_PASS = 1 << 15  # straddling cells evaluated at once (bounds memory for a mask that is all contour)


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


class SparseUpsampler:
    """Threshold facts about F.interpolate(logits, out_size) for k x h x w logits, from the cells."""

    def __init__(self, in_size: Tuple[int, int], out_size: Tuple[int, int], device: torch.device) -> None:
        self.in_h, self.in_w = (int(s) for s in in_size)
        self.out_h, self.out_w = (int(s) for s in out_size)
        if self.out_h < self.in_h or self.out_w < self.in_w:
            raise ValueError(f"only for upsampling; {in_size} -> {out_size} shrinks")
        self.rows = axis_map(self.in_h, self.out_h, torch.device(device))
        self.cols = axis_map(self.in_w, self.out_w, torch.device(device))

    # -- cells ---------------------------------------------------------------------------------

    def _classify(self, logits: torch.Tensor, thresholds: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(clear, level) per cell for ascending thresholds: clear when its 4 corners sit in the same
        gap between thresholds (by a margin); level = how many thresholds lie below a clear cell."""
        lo, hi = logits.aminmax()
        # A convex combination of 4 floats is off by a few units of 6e-8 of the largest: 1e-6 is ample.
        margin = 1e-6 * max(abs(float(lo)), abs(float(hi))) + 1e-5 * (1 + max(abs(t) for t in thresholds))
        if any(b - a <= 4 * margin for a, b in zip(thresholds, thresholds[1:])):
            # Thresholds closer than their margins (a tiny stability offset): one at a time.
            parts = [self._classify(logits, [t]) for t in thresholds]
            clear = torch.stack([c for c, _ in parts]).all(dim=0)
            return clear, sum(level for _, level in parts)
        # Which gap each value is in: 2n between the thresholds n-1 and n, odd within a margin of one.
        bucket = torch.zeros(logits.shape, dtype=torch.uint8, device=logits.device)
        for t in thresholds:
            bucket += logits > t - margin
            bucket += logits > t + margin
        padded = torch.cat([bucket, bucket[:, -1:]], 1)  # the kernel repeats the last row and column
        padded = torch.cat([padded, padded[:, :, -1:]], 2)
        corner = padded[:, :-1, :-1]
        clear = (corner == padded[:, :-1, 1:]) & (corner == padded[:, 1:, :-1]) & (corner == padded[:, 1:, 1:])
        clear &= (corner & 1) == 0
        return clear, corner >> 1

    def _exact(self, logits: torch.Tensor, m: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Upsampled logits of masks m (n,) at output rows y (n x R) and columns x (n x C): n x R x C."""
        rows, cols = self.rows, self.cols
        y0, x0 = rows.cell[y][:, :, None], cols.cell[x][:, None, :]
        y1, x1 = (y0 + 1).clamp(max=self.in_h - 1), (x0 + 1).clamp(max=self.in_w - 1)
        m = m[:, None, None]
        a, b, c, d = logits[m, y0, x0], logits[m, y0, x1], logits[m, y1, x0], logits[m, y1, x1]
        return _combine(a, b, c, d, cols.w0[x][:, None, :], cols.w1[x][:, None, :], rows.w0[y][:, :, None], rows.w1[y][:, :, None])

    def _in_cells(self, logits, m, i, j, y, x) -> torch.Tensor:
        """`_exact` for rows y (n x R) that all fall in cell row i and columns x (n x C) in cell
        column j: the four corners are gathered once per cell, not once per pixel."""
        i1, j1 = (i + 1).clamp(max=self.in_h - 1), (j + 1).clamp(max=self.in_w - 1)
        a, b = logits[m, i, j][:, None, None], logits[m, i, j1][:, None, None]
        c, d = logits[m, i1, j][:, None, None], logits[m, i1, j1][:, None, None]
        rows, cols = self.rows, self.cols
        return _combine(a, b, c, d, cols.w0[x][:, None, :], cols.w1[x][:, None, :], rows.w0[y][:, :, None], rows.w1[y][:, :, None])

    def _cell_pixels(self, i: torch.Tensor, j: torch.Tensor):
        return cell_pixels(self.rows, self.cols, i, j, self.out_h, self.out_w)

    # -- stability counts ----------------------------------------------------------------------

    def count_above(self, logits: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
        """k x len(thresholds) int64: pixels of each upsampled mask above each threshold."""
        unique = sorted(set(float(t) for t in thresholds))
        if logits.shape[0] == 0:
            return torch.zeros(0, len(thresholds), dtype=torch.long, device=logits.device)
        clear, level = self._classify(logits, unique)
        # Pixel counts of the clear cells: whole numbers, summed exactly by float matrix products
        # (row sums stay below 2**24 in float32, on a CPU at full float32 precision; else float64).
        fast = logits.device.type == "cpu" and torch.get_float32_matmul_precision() == "highest"
        row_dtype = torch.float32 if fast else torch.float64
        row_px, col_px = self.rows.count.double(), self.cols.count.to(row_dtype)
        counts = torch.stack(
            [((clear & (level > n)).to(row_dtype) @ col_px).double() @ row_px for n in range(len(unique))], dim=1
        ).round().long()
        m, i, j = (~clear).nonzero(as_tuple=True)
        for part in _passes(m.numel()):
            y, x, y_ok, x_ok = self._cell_pixels(i[part], j[part])
            values = self._in_cells(logits, m[part], i[part], j[part], y, x)
            real = y_ok[:, :, None] & x_ok[:, None, :]
            for n, t in enumerate(unique):
                counts[:, n].index_add_(0, m[part], ((values > t) & real).sum(dim=(1, 2)))
        return counts[:, [unique.index(float(t)) for t in thresholds]]

    # -- masks ---------------------------------------------------------------------------------

    def encode(
        self, logits: torch.Tensor, threshold: float, crop_box: Sequence[int], orig_size: Tuple[int, int]
    ) -> Tuple[List[np.ndarray], torch.Tensor]:
        """RLE counts (in the full image's frame, the crop pasted at crop_box) and XYXY boxes (in the
        crop's frame, inclusive, [0, 0, 0, 0] when empty) of the masks `upsampled logits > threshold`,
        without building them."""
        k, dev = logits.shape[0], logits.device
        H, W = self.out_h, self.out_w
        if k == 0:
            return [], torch.zeros(0, 4, dtype=torch.long, device=dev)
        clear, level = self._classify(logits, [threshold])
        on = clear & (level > 0)
        m, i, j = (~clear).nonzero(as_tuple=True)
        boxes = self._clear_boxes(on)
        found = []  # (mask, y, x) of run starts in the crop's own column-major order, rows >= 1
        for part in _passes(m.numel()):
            mp, ip, jp = m[part], i[part], j[part]
            y, x, y_ok, x_ok = self._cell_pixels(ip, jp)
            first, count = self.rows.start[ip], self.rows.count[ip]
            own = self._in_cells(logits, mp, ip, jp, y, x) > threshold  # n x R x C
            real = y_ok[:, :, None] & x_ok[:, None, :]
            boxes = _grow_boxes(boxes, mp[:, None, None].expand_as(own), y[:, :, None].expand_as(own),
                                x[:, None, :].expand_as(own), own & real)
            # A run starts where a pixel differs from the one above it. The cell's first row compares
            # with the last row of the cell above; row 0 waits for the wrap between columns below.
            up = (ip - 1).clamp(min=0)
            above = self._in_cells(logits, mp, up, jp, (first - 1).clamp(min=0)[:, None], x)[:, 0] > threshold
            change = (own != torch.cat([above[:, None], own[:, :-1]], dim=1)) & real & (y >= 1)[:, :, None]
            n_idx, r_idx, c_idx = change.nonzero(as_tuple=True)
            found.append((mp[n_idx], y[n_idx, r_idx], x[n_idx, c_idx]))
            # The first row of the cell below: checked here when that cell is clear (a straddling
            # one checks its own first row).
            down = (ip + 1).clamp(max=self.in_h - 1)
            below_y = first + count
            has_below = (below_y < self.out_h) & clear[mp, down, jp]
            below = self._in_cells(logits, mp, down, jp, below_y.clamp(max=self.out_h - 1)[:, None], x)[:, 0] > threshold
            last = own[torch.arange(len(mp), device=dev), count - 1]
            n_idx, c_idx = ((below != last) & x_ok & has_below[:, None]).nonzero(as_tuple=True)
            found.append((mp[n_idx], below_y[n_idx], x[n_idx, c_idx]))
        # The first and last rows, exactly, for the run boundaries between columns.
        every = torch.arange(W, device=dev).expand(k, -1)
        masks = torch.arange(k, device=dev)
        top = self._exact(logits, masks, torch.zeros(k, 1, dtype=torch.long, device=dev), every)[:, 0] > threshold
        bottom = self._exact(logits, masks, torch.full((k, 1), H - 1, device=dev), every)[:, 0] > threshold
        ms, ys, xs = (torch.cat(v) for v in zip(*found)) if found else (torch.zeros(0, dtype=torch.long, device=dev),) * 3
        counts = _to_image_frame(ms, ys, xs, top, bottom, crop_box, orig_size, H, W)
        return counts, torch.where(boxes[:, 2:3] < 0, torch.zeros_like(boxes), boxes)

    def _clear_boxes(self, on: torch.Tensor) -> torch.Tensor:
        """k x 4 boxes (x0, y0, x1, y1) over the clear-inside cells' pixels; an empty mask gets the
        impossible box (W, H, -1, -1) until straddling pixels widen it."""
        boxes = []
        for axis_any, axis in ((on.any(dim=1), self.cols), (on.any(dim=2), self.rows)):
            n = axis_any.shape[1]
            first = axis_any.to(torch.uint8).argmax(dim=1)
            last = n - 1 - axis_any.flip(1).to(torch.uint8).argmax(dim=1)
            some = axis_any.any(dim=1)
            size = int(axis.cell.numel())
            boxes.append((torch.where(some, axis.start[first], size), torch.where(some, axis.start[last] + axis.count[last] - 1, -1)))
        (x0, x1), (y0, y1) = boxes
        return torch.stack([x0, y0, x1, y1], dim=1)


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


def _passes(n: int):
    for first in range(0, n, _CELLS_PER_PASS):
        yield slice(first, first + _CELLS_PER_PASS)


def _grow_boxes(boxes, m, y, x, on):
    """Widen k x 4 boxes (x0, y0, x1, y1) to take in the pixels (m, y, x) where `on`."""
    m, y, x = m[on], y[on], x[on]
    if m.numel() == 0:
        return boxes
    boxes = boxes.clone()
    for col, values, how in ((0, x, "amin"), (1, y, "amin"), (2, x, "amax"), (3, y, "amax")):
        boxes[:, col] = boxes[:, col].scatter_reduce(0, m, values, reduce=how, include_self=True)
    return boxes


def _to_image_frame(m, y, x, top, bottom, crop_box, orig_size, H, W) -> List[np.ndarray]:
    """RLE counts in the full image from run starts found inside crop columns (rows >= 1) plus each
    column's first and last pixel (top, bottom: k x W)."""
    k = top.shape[0]
    dev = top.device
    x0, y0 = int(crop_box[0]), int(crop_box[1])
    orig_h, orig_w = (int(s) for s in orig_size)
    total = orig_h * orig_w
    index = [(x + x0) * orig_h + y0 + y]
    owner = [m]
    if y0 == 0 and H == orig_h:
        # Full-height crop: a column's first pixel follows the previous column's last one.
        before = torch.cat([torch.zeros(k, 1, dtype=torch.bool, device=dev), bottom[:, :-1]], dim=1)
        mm, xx = (top != before).nonzero(as_tuple=True)
        index.append((xx + x0) * orig_h)
        owner.append(mm)
        mm = bottom[:, -1].nonzero().flatten()  # a run reaching the crop's end stops there
        index.append(torch.full_like(mm, (x0 + W) * orig_h))
        owner.append(mm)
    else:
        # Pixels above and below the crop are outside the mask: each column opens and closes its runs.
        mm, xx = top.nonzero(as_tuple=True)
        index.append((xx + x0) * orig_h + y0)
        owner.append(mm)
        mm, xx = bottom.nonzero(as_tuple=True)
        index.append((xx + x0) * orig_h + y0 + H)
        owner.append(mm)
    index, owner = torch.cat(index), torch.cat(owner)
    keep = index < total  # a run that reaches the image's last pixel just ends
    index, owner = index[keep], owner[keep]
    order = torch.argsort(owner * (total + 1) + index)
    index, owner = index[order], owner[order]
    per_mask = torch.bincount(owner, minlength=k).cpu().numpy()
    index = index.cpu().numpy()
    return [np.diff(t, prepend=0, append=total) for t in np.split(index, np.cumsum(per_mask)[:-1])] if k else []

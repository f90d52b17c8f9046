"""Helpers of the automatic mask generator, with the names of `segment_anything.utils.amg`, so
`from grounded.sam.utils.amg import ...` replaces `from segment_anything.utils.amg import ...`.

The results are the reference's; the differences are speed and memory: RLE encoding is one
vectorised pass over a whole batch (and can write a crop's masks straight into the full image's
frame, without padding them to full size first), RLE decoding is `np.repeat`, and box finding
reduces each mask to its row and column occupancy before looking for edges.

Uncompressed RLE follows pycocotools: column-major (Fortran) order, runs alternating starting
with zeros, `{"size": [h, w], "counts": [...]}`.
"""

import math
from copy import deepcopy
from itertools import product
from typing import Any, Dict, Generator, ItemsView, List, Sequence, Tuple

import numpy as np
import torch


class MaskData:
    """Per-mask fields (tensors, arrays or lists of equal length) filtered and concatenated together."""

    def __init__(self, **kwargs) -> None:
        for v in kwargs.values():
            _check_stat(v)
        self._stats = dict(**kwargs)

    def __setitem__(self, key: str, item: Any) -> None:
        _check_stat(item)
        self._stats[key] = item

    def __delitem__(self, key: str) -> None:
        del self._stats[key]

    def __getitem__(self, key: str) -> Any:
        return self._stats[key]

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def items(self) -> ItemsView[str, Any]:
        return self._stats.items()

    def filter(self, keep: torch.Tensor) -> None:
        """Keep the entries selected by a boolean mask or a list of indices (in that order)."""
        keep = torch.as_tensor(keep)
        keep_cpu = keep.detach().cpu()
        indices = keep_cpu.nonzero().flatten() if keep_cpu.dtype == torch.bool else keep_cpu
        for k, v in self._stats.items():
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                self._stats[k] = v[keep.to(v.device)]
            elif isinstance(v, np.ndarray):
                self._stats[k] = v[keep_cpu.numpy()]
            elif isinstance(v, list):
                self._stats[k] = [v[i] for i in indices.tolist()]
            else:
                raise TypeError(f"MaskData key {k} has an unsupported type {type(v)}.")

    def cat(self, new_stats: "MaskData") -> None:
        for k, v in new_stats.items():
            if k not in self._stats or self._stats[k] is None:
                self._stats[k] = deepcopy(v)
            elif isinstance(v, torch.Tensor):
                self._stats[k] = torch.cat([self._stats[k], v.to(self._stats[k].device)], dim=0)
            elif isinstance(v, np.ndarray):
                self._stats[k] = np.concatenate([self._stats[k], v], axis=0)
            elif isinstance(v, list):
                self._stats[k] = self._stats[k] + v  # the items are never edited in place: no copy
            else:
                raise TypeError(f"MaskData key {k} has an unsupported type {type(v)}.")

    def to_numpy(self) -> None:
        for k, v in self._stats.items():
            if isinstance(v, torch.Tensor):
                self._stats[k] = v.detach().cpu().numpy()


def _check_stat(v: Any) -> None:
    if not isinstance(v, (list, np.ndarray, torch.Tensor)):
        raise TypeError("MaskData only supports list, numpy arrays, and torch tensors.")


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: List[int], orig_box: List[int], atol: float = 20.0
) -> torch.Tensor:
    """Masks at the edge of a crop but not at the edge of the original image (likely cut off)."""
    crop_box_torch = torch.as_tensor(crop_box, dtype=torch.float, device=boxes.device)
    orig_box_torch = torch.as_tensor(orig_box, dtype=torch.float, device=boxes.device)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop_edge = torch.isclose(boxes, crop_box_torch[None, :], atol=atol, rtol=0)
    near_image_edge = torch.isclose(boxes, orig_box_torch[None, :], atol=atol, rtol=0)
    return torch.any(near_crop_edge & ~near_image_edge, dim=1)


def box_xyxy_to_xywh(box_xyxy):
    box_xywh = deepcopy(box_xyxy)
    box_xywh[2] = box_xywh[2] - box_xywh[0]
    box_xywh[3] = box_xywh[3] - box_xywh[1]
    return box_xywh


def batch_iterator(batch_size: int, *args) -> Generator[List[Any], None, None]:
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("Batched iteration must have inputs of all the same size.")
    n_batches = len(args[0]) // batch_size + int(len(args[0]) % batch_size != 0)
    for b in range(n_batches):
        yield [arg[b * batch_size : (b + 1) * batch_size] for arg in args]


# ---- RLE ---------------------------------------------------------------------------------------


def mask_to_rle_pytorch(tensor: torch.Tensor) -> List[Dict[str, Any]]:
    """BxHxW bool masks -> uncompressed RLEs (counts as lists of ints), as pycocotools expects."""
    b, h, w = tensor.shape
    counts = masks_to_rle_counts(tensor, [0, 0, w, h], h, w)
    return [{"size": [h, w], "counts": c.tolist()} for c in counts]


def masks_to_rle_counts(masks: torch.Tensor, crop_box: Sequence[int], orig_h: int, orig_w: int) -> List[np.ndarray]:
    """RLE counts (int64 arrays) of BxhxW bool masks cut from `crop_box` of an orig_h x orig_w image,
    in the full image's frame: the same as padding the masks to full size and encoding them, without
    ever building the full-size masks. One pass over the whole batch, on the masks' device.

    Column-major order: a run boundary ("transition") sits at every pixel whose value differs from
    the pixel before it, a zero pixel standing before the first. The counts are the gaps between
    transitions, starting from 0 and ending at h * w, so a mask whose first pixel is set starts
    with a zero-length run of zeros, as pycocotools does.
    """
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    b, h, w = masks.shape
    if (h, w) != (y1 - y0, x1 - x0):
        raise ValueError(f"masks of size {h}x{w} do not fit crop box {list(crop_box)}")
    if b == 0:
        return []
    columns = masks.transpose(1, 2)  # B x w x h: each row is one image column, top to bottom
    if y0 == 0 and y1 == orig_h:
        # Full-height crop: its columns are contiguous in the image, so encode them as one run
        # of pixels, with a zero before and after (the columns left and right are outside the crop).
        flat = torch.nn.functional.pad(columns.reshape(b, w * h), (1, 1))
        mask_idx, pos = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
        starts = pos + x0 * orig_h
    else:
        # Each column is bordered above and below by pixels outside the crop (zeros): pad every
        # column with one zero at each end, and a transition at padded position q maps to image
        # row y0 + q of that column (q == h is the first pixel below the crop).
        padded = torch.nn.functional.pad(columns, (1, 1))
        mask_idx, col, pos = (padded[..., 1:] != padded[..., :-1]).nonzero(as_tuple=True)
        starts = (col + x0) * orig_h + y0 + pos
    total = orig_h * orig_w
    # A mask that runs to the image's last pixel "changes" just past it: that is the end, not a run.
    inside = starts < total
    mask_idx, starts = mask_idx[inside], starts[inside]
    per_mask = torch.bincount(mask_idx, minlength=b).cpu().numpy()
    starts = starts.cpu().numpy()
    out = []
    for transitions in np.split(starts, np.cumsum(per_mask)[:-1]):
        out.append(np.diff(transitions, prepend=0, append=total))
    return out


def rle_to_mask(rle: Dict[str, Any]) -> np.ndarray:
    """Compute a binary mask from an uncompressed RLE."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate, starting with zeros
    mask = np.repeat(values, counts)
    if mask.size != h * w:
        raise ValueError(f"RLE counts sum to {mask.size}, not {h}x{w}={h * w}")
    return mask.reshape(w, h).transpose()  # C order view of the column-major data


def area_from_rle(rle: Dict[str, Any]) -> int:
    return int(np.sum(np.asarray(rle["counts"], dtype=np.int64)[1::2]))


def coco_encode_rle(uncompressed_rle: Dict[str, Any]) -> Dict[str, Any]:
    """Uncompressed RLE -> COCO's compressed RLE with a str `counts` (JSON-ready), as pycocotools."""
    from grounded.rle import compress_rle

    return compress_rle(uncompressed_rle)


# ---- scores, boxes, grids, crops ---------------------------------------------------------------


def calculate_stability_score(masks: torch.Tensor, mask_threshold: float, threshold_offset: float) -> torch.Tensor:
    """IoU between the masks binarised at mask_threshold +- threshold_offset. The high mask always
    lies inside the low one, so IoU is a ratio of pixel counts. Row sums in int16 (as the reference:
    same numbers, and no int64 copy of the masks)."""
    intersections = (masks > (mask_threshold + threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    unions = (masks > (mask_threshold - threshold_offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return intersections / unions


def build_point_grid(n_per_side: int) -> np.ndarray:
    """Generates a 2D grid of points evenly spaced in [0,1]x[0,1]."""
    offset = 1 / (2 * n_per_side)
    points_one_side = np.linspace(offset, 1 - offset, n_per_side)
    points_x = np.tile(points_one_side[None, :], (n_per_side, 1))
    points_y = np.tile(points_one_side[:, None], (1, n_per_side))
    return np.stack([points_x, points_y], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int) -> List[np.ndarray]:
    """Generates point grids for all crop layers."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: Tuple[int, ...], n_layers: int, overlap_ratio: float
) -> Tuple[List[List[int]], List[int]]:
    """The whole image, then (2**i)**2 overlapping crops for layer i (XYXY boxes, layer indices)."""
    crop_boxes, layer_idxs = [], []
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    crop_boxes.append([0, 0, im_w, im_h])
    layer_idxs.append(0)

    def crop_len(orig_len, n_crops, overlap):
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_crops_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops_per_side))
        crop_w = crop_len(im_w, n_crops_per_side, overlap)
        crop_h = crop_len(im_h, n_crops_per_side, overlap)
        crop_box_x0 = [int((crop_w - overlap) * i) for i in range(n_crops_per_side)]
        crop_box_y0 = [int((crop_h - overlap) * i) for i in range(n_crops_per_side)]
        for x0, y0 in product(crop_box_x0, crop_box_y0):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(i_layer + 1)
    return crop_boxes, layer_idxs


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: List[int]) -> torch.Tensor:
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
    if len(boxes.shape) == 3:  # a channel dimension
        offset = offset.unsqueeze(1)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: List[int]) -> torch.Tensor:
    x0, y0, _, _ = crop_box
    offset = torch.tensor([[x0, y0]], device=points.device)
    if len(points.shape) == 3:
        offset = offset.unsqueeze(1)
    return points + offset


def uncrop_masks(masks: torch.Tensor, crop_box: List[int], orig_h: int, orig_w: int) -> torch.Tensor:
    """Pad crop masks to the full image (kept for drop-in use; the generator encodes crops directly)."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return masks
    pad_x, pad_y = orig_w - (x1 - x0), orig_h - (y1 - y0)
    return torch.nn.functional.pad(masks, (x0, pad_x - x0, y0, pad_y - y0), value=0)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Removes small disconnected regions ("islands") or fills small holes ("holes") in a mask.
    Returns the mask and whether it changed. Needs opencv."""
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working_mask = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working_mask, 8)
    sizes = stats[:, -1][1:]  # row 0 is the background label
    small_regions = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if len(small_regions) == 0:
        return mask, False
    fill_labels = [0] + small_regions
    if not correct_holes:
        fill_labels = [i for i in range(n_labels) if i not in fill_labels]
        if len(fill_labels) == 0:  # every region is below the threshold: keep the largest
            fill_labels = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill_labels), True


def batched_mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (int64, inclusive right/bottom pixel) around C1xC2x...xHxW masks; [0, 0, 0, 0] for
    an empty mask."""
    if torch.numel(masks) == 0:
        return torch.zeros(*masks.shape[:-2], 4, device=masks.device)
    shape = masks.shape
    h, w = shape[-2:]
    masks = masks.reshape(-1, h, w)
    rows = masks.any(dim=-1).to(torch.uint8)  # N x H: which rows hold the mask
    cols = masks.any(dim=-2).to(torch.uint8)  # N x W
    top = rows.argmax(dim=-1)
    bottom = h - 1 - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = w - 1 - cols.flip(-1).argmax(dim=-1)
    out = torch.stack([left, top, right, bottom], dim=-1)
    out = out * rows.any(dim=-1, keepdim=True)  # empty masks -> [0, 0, 0, 0]
    return out.reshape(*shape[:-2], 4) if len(shape) > 2 else out[0]

"""`Detections`: the boxes, masks, scores and labels of one image, the container every node speaks.

Written in the spirit of supervision's container (filtering, indexing, NMS, merging; `confidence`
is supervision's name for `scores`) but kept here: the supervision pinned beside groundingdino-py
(0.6.0) is too old to share. Masks are stored as COCO run-length encodings (pycocotools-compatible
dicts with `size` [H, W] and `counts` as a str, see `grounded.rle`) and decoded only when asked
for: a hundred full-resolution boolean masks per image would otherwise dominate a pipeline's memory.

This module and `grounded.rle` (numpy only) are the floor of the output vocabulary: they import
nothing from `grounded.io`. Conversion to files (COCO, YOLO, JSON) is `grounded.io.formats`;
torchvision (NMS) is imported only by the method that needs it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .rle import decode_masks, encode_masks, normalize_rle, rle_areas, rle_boxes_xyxy

RLE = Dict[str, Any]  # {"size": [H, W], "counts": str}


# ---- Detections -------------------------------------------------------------------------------

Index = Union[int, slice, Sequence[int], Sequence[bool], np.ndarray]


class Detections:
    """The objects found in one image: N boxes, optionally with masks, scores, class ids, labels
    (free-text phrases) and any per-detection arrays in `data`.

    - `xyxy`: float32 Nx4, pixels, (x0, y0, x1, y1).
    - `mask`: NxHxW bool, decoded on access from `rles` (the stored form). Pass either to the
      constructor: `mask=` a bool array (encoded once) or `rles=` a list of COCO RLE dicts.
    - `scores` (also `confidence`, supervision's name): float32 N; `class_id`: int64 N; `labels`:
      list of N str; each may be None.
    - `data`: dict of per-detection values (arrays or lists of length N), e.g. SAM's
      `stability_score`; they are indexed, filtered and merged along with everything else.

    Indexing (`d[3]`, `d[1:4]`, `d[d.scores > 0.5]`, `d[[0, 2]]`) always returns a `Detections`.
    """

    __slots__ = ("xyxy", "_rles", "scores", "class_id", "labels", "data", "image_size")

    def __init__(
        self,
        xyxy: Any,
        *,
        mask: Optional[np.ndarray] = None,
        rles: Optional[Sequence[Mapping]] = None,
        scores: Any = None,
        class_id: Any = None,
        labels: Optional[Sequence[str]] = None,
        data: Optional[Mapping[str, Any]] = None,
        image_size: Optional[Tuple[int, int]] = None,
        confidence: Any = None,
    ) -> None:
        if confidence is not None:
            if scores is not None:
                raise ValueError("give scores= or confidence= (the same thing by supervision's name), not both")
            scores = confidence
        xyxy = np.asarray(xyxy, dtype=np.float32)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        if xyxy.ndim != 2 or xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must be Nx4 (x0, y0, x1, y1), got shape {xyxy.shape}")
        n = len(xyxy)
        if mask is not None and rles is not None:
            raise ValueError("give mask= (bool NxHxW) or rles= (COCO RLE dicts), not both")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim != 3 or len(mask) != n:
                raise ValueError(f"mask must be NxHxW with N={n}, got shape {mask.shape}")
            if mask.dtype != bool:
                raise ValueError(f"mask must be boolean, got {mask.dtype} (threshold it first, e.g. logits > 0)")
            image_size = _same_size(image_size, mask.shape[1:], "mask")
            rles = encode_masks(mask)
        elif rles is not None:
            rles = [normalize_rle(r) for r in rles]
            if len(rles) != n:
                raise ValueError(f"{len(rles)} masks for {n} boxes")
            for r in rles:
                image_size = _same_size(image_size, r["size"], "mask RLE")
        self.xyxy = xyxy
        self._rles: Optional[List[RLE]] = rles
        self.scores = _column(scores, n, np.float32, "scores")
        self.class_id = _column(class_id, n, np.int64, "class_id")
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(labels) != n:
                raise ValueError(f"{len(labels)} labels for {n} boxes")
        self.labels: Optional[List[str]] = labels
        self.data: Dict[str, Any] = {}
        for key, values in (data or {}).items():
            if len(values) != n:
                raise ValueError(f"data[{key!r}] has {len(values)} values for {n} boxes")
            self.data[key] = values if isinstance(values, (list, np.ndarray)) else list(values)
        self.image_size: Optional[Tuple[int, int]] = None if image_size is None else (int(image_size[0]), int(image_size[1]))

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def empty(cls, image_size: Optional[Tuple[int, int]] = None, *, with_masks: bool = False) -> "Detections":
        """No detections (optionally with a zero-length mask list for an image of `image_size`)."""
        return cls(np.zeros((0, 4), np.float32), rles=[] if with_masks else None, image_size=image_size)

    @classmethod
    def from_masks(cls, mask: np.ndarray, **kwargs) -> "Detections":
        """Detections whose boxes are the tight boxes of their masks (NxHxW bool)."""
        mask = np.asarray(mask, dtype=bool)
        rles = encode_masks(mask)
        return cls(rle_boxes_xyxy(rles), rles=rles, image_size=mask.shape[1:], **kwargs)

    @classmethod
    def from_sam_records(cls, records: Sequence[Mapping], image_size: Optional[Tuple[int, int]] = None) -> "Detections":
        """From `SamAutomaticMaskGenerator.generate` output (binary masks or RLE): boxes around
        the masks, scores = `predicted_iou`; `stability_score`, `point_coords` and
        `crop_box` go to `data`."""
        if not records:
            return cls.empty(image_size, with_masks=True)
        rles: List[RLE] = []
        binary: List[np.ndarray] = []
        for r in records:
            seg = r["segmentation"]
            if isinstance(seg, Mapping):
                rles.append(normalize_rle(seg))
            else:
                binary.append(np.asarray(seg, dtype=bool))
        if binary and rles:
            raise ValueError("records mix binary masks and RLE")
        if binary:
            rles = encode_masks(np.stack(binary))
        # Boxes from the masks, as COCO counts them (a one-pixel mask is 1x1); the records' own
        # bbox follows SAM's convention, one pixel smaller.
        xyxy = rle_boxes_xyxy(rles)
        data: Dict[str, Any] = {}
        for key in ("stability_score", "point_coords", "crop_box"):
            if all(key in r for r in records):
                values = [r[key] for r in records]
                data[key] = np.asarray(values, dtype=np.float32) if key == "stability_score" else values
        scores = [r["predicted_iou"] for r in records] if all("predicted_iou" in r for r in records) else None
        return cls(xyxy, rles=rles, scores=scores, data=data, image_size=image_size)

    def replace(self, **changes) -> "Detections":
        """A copy with some fields replaced (`mask=` or `rles=` replace the masks)."""
        kwargs: Dict[str, Any] = dict(xyxy=self.xyxy, rles=self._rles, scores=self.scores, class_id=self.class_id,
                                      labels=self.labels, data=self.data, image_size=self.image_size)
        if "mask" in changes:
            kwargs.pop("rles")
            kwargs["image_size"] = None
        kwargs.update(changes)
        return Detections(**kwargs)

    # ---- masks ------------------------------------------------------------------------------

    @property
    def has_masks(self) -> bool:
        return self._rles is not None

    @property
    def rles(self) -> Optional[List[RLE]]:
        """The masks as COCO RLE dicts (the stored form), or None without masks."""
        return self._rles

    @property
    def mask(self) -> Optional[np.ndarray]:
        """The masks as an NxHxW bool array, decoded now (not kept), or None without masks."""
        if self._rles is None:
            return None
        return decode_masks(self._rles, self.image_size)

    def mask_of(self, i: int) -> np.ndarray:
        """One decoded HxW mask (cheaper than `mask[i]`)."""
        if self._rles is None:
            raise ValueError("these detections have no masks")
        return decode_masks([self._rles[i]])[0]

    @property
    def area(self) -> np.ndarray:
        """Mask pixel counts when there are masks, otherwise box areas."""
        if self._rles is not None:
            return rle_areas(self._rles)
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    @property
    def confidence(self) -> Optional[np.ndarray]:
        """supervision's name for `scores`."""
        return self.scores

    @confidence.setter
    def confidence(self, values: Any) -> None:
        self.scores = _column(values, len(self), np.float32, "confidence")

    # ---- container --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Index) -> "Detections":
        idx = self._indices(index)
        return Detections(
            self.xyxy[idx],
            rles=None if self._rles is None else [self._rles[i] for i in idx],
            scores=None if self.scores is None else self.scores[idx],
            class_id=None if self.class_id is None else self.class_id[idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            data={k: _take(v, idx) for k, v in self.data.items()},
            image_size=self.image_size,
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _indices(self, index: Index) -> np.ndarray:
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"detection index {i} out of range for {n} detections")
            return np.array([i % n])
        if isinstance(index, slice):
            return np.arange(n)[index]
        arr = np.asarray(index)
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise IndexError(f"boolean index of shape {arr.shape} for {n} detections")
            return np.flatnonzero(arr)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise IndexError(f"index detections with an int, a slice, a bool mask or an int array, not {arr.dtype} {arr.shape}")
        if (arr >= n).any() or (arr < -n).any():
            raise IndexError(f"detection index out of range for {n} detections")
        return arr % n

    def filter(self, keep: Optional[Index] = None, *, min_score: Optional[float] = None,
               min_area: Optional[float] = None, labels: Optional[Iterable[str]] = None,
               class_ids: Optional[Iterable[int]] = None) -> "Detections":
        """The detections that pass every condition given: `keep` (bool mask or indices),
        `min_score`, `min_area` (mask pixels, or box area without masks), `labels`, `class_ids`."""
        ok = np.ones(len(self), dtype=bool)
        if keep is not None:
            chosen = np.zeros(len(self), dtype=bool)
            chosen[self._indices(keep)] = True
            ok &= chosen
        if min_score is not None:
            if self.scores is None:
                raise ValueError("filter(min_score=...) needs scores, and these detections have none")
            ok &= self.scores >= min_score
        if min_area is not None:
            ok &= self.area >= min_area
        if labels is not None:
            if self.labels is None:
                raise ValueError("filter(labels=...) needs labels, and these detections have none")
            wanted = set(labels)
            ok &= np.array([label in wanted for label in self.labels], dtype=bool)
        if class_ids is not None:
            if self.class_id is None:
                raise ValueError("filter(class_ids=...) needs class ids, and these detections have none")
            ok &= np.isin(self.class_id, list(class_ids))
        return self[ok]

    def nms(self, iou_threshold: float = 0.5, class_agnostic: bool = False) -> "Detections":
        """Box non-maximum suppression (torchvision). Per class (class_id, else label) unless
        `class_agnostic`. The kept detections stay in their original order."""
        if self.scores is None:
            raise ValueError("nms needs scores, and these detections have none")
        if len(self) == 0:
            return self
        import torch
        from torchvision.ops import batched_nms

        if class_agnostic:
            groups = np.zeros(len(self), dtype=np.int64)
        elif self.class_id is not None:
            groups = self.class_id
        elif self.labels is not None:
            groups = np.unique(np.array(self.labels, dtype=object).astype(str), return_inverse=True)[1]
        else:
            groups = np.zeros(len(self), dtype=np.int64)
        keep = batched_nms(torch.from_numpy(self.xyxy.astype(np.float32)), torch.from_numpy(self.scores.astype(np.float32)),
                           torch.from_numpy(np.asarray(groups, dtype=np.int64)), float(iou_threshold))
        return self[np.sort(keep.numpy())]

    @classmethod
    def merge(cls, parts: Sequence["Detections"]) -> "Detections":
        """Concatenate detections of the same image. A field (masks, scores, class_id, labels, a
        data key) must be present in every non-empty part or in none."""
        parts = list(parts)
        sizes = {p.image_size for p in parts if p.image_size is not None}
        if len(sizes) > 1:
            raise ValueError(f"cannot merge detections of different image sizes {sorted(sizes)}")
        image_size = sizes.pop() if sizes else None
        filled = [p for p in parts if len(p)]
        if not filled:
            with_masks = any(p.has_masks for p in parts)
            return cls.empty(image_size, with_masks=with_masks)

        def present(name: str, get) -> bool:
            have = [get(p) is not None for p in filled]
            if any(have) and not all(have):
                raise ValueError(f"cannot merge: {name} is set in some detections and missing in others")
            return all(have)

        keys = set(filled[0].data)
        if any(set(p.data) != keys for p in filled):
            raise ValueError(f"cannot merge: data keys differ ({[sorted(p.data) for p in filled]})")
        return cls(
            np.concatenate([p.xyxy for p in filled]),
            rles=[r for p in filled for r in p._rles] if present("masks", lambda p: p._rles) else None,
            scores=np.concatenate([p.scores for p in filled]) if present("scores", lambda p: p.scores) else None,
            class_id=np.concatenate([p.class_id for p in filled]) if present("class_id", lambda p: p.class_id) else None,
            labels=[l for p in filled for l in p.labels] if present("labels", lambda p: p.labels) else None,
            data={k: _concat([p.data[k] for p in filled]) for k in keys},
            image_size=image_size,
        )

    # ---- comparison and display -------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        def same(a, b):
            if a is None or b is None:
                return a is None and b is None
            return np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
        return (np.array_equal(self.xyxy, other.xyxy) and self._rles == other._rles and same(self.scores, other.scores)
                and same(self.class_id, other.class_id) and self.labels == other.labels
                and self.data.keys() == other.data.keys()
                and all(same(self.data[k], other.data[k]) for k in self.data))

    __hash__ = None  # mutable container

    def __repr__(self) -> str:
        parts = [f"{len(self)} detections"]
        if self.has_masks:
            parts.append(f"masks {self.image_size[0]}x{self.image_size[1]}" if self.image_size else "masks")
        for name in ("scores", "class_id", "labels"):
            if getattr(self, name) is not None:
                parts.append(name)
        if self.data:
            parts.append("data: " + ", ".join(sorted(self.data)))
        return f"Detections({'; '.join(parts)})"


def _same_size(current, size, what) -> Tuple[int, int]:
    size = (int(size[0]), int(size[1]))
    if current is not None and tuple(int(v) for v in current) != size:
        raise ValueError(f"{what} size {size[0]}x{size[1]} does not match image_size {current[0]}x{current[1]}")
    return size


def _column(values, n: int, dtype, name: str) -> Optional[np.ndarray]:
    if values is None:
        return None
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{len(arr)} {name} for {n} boxes")
    return arr


def _take(values, idx: np.ndarray):
    if isinstance(values, np.ndarray):
        return values[idx]
    return [values[i] for i in idx]


def _concat(columns: List[Any]):
    if all(isinstance(c, np.ndarray) for c in columns):
        return np.concatenate(columns)
    return [v for c in columns for v in c]

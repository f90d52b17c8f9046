"""SAM nodes: automatic masks, masks from boxes, masks from points.

Each names its model (a known checkpoint name, a file, a folder or a Hugging Face hub id), a
device and a dtype; the run's `ModelCache` loads it once for every node that names it, and the
nodes share one `SamPredictor` per model (`sam_predictor`), so one image is encoded once however
many nodes prompt it. Images of a batch go through the image encoder together. This module
registers the model kinds "sam" and "sam_predictor" (and their "_torch"/"_onnxruntime"/"_openvino" forms).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..pipeline.models import DTYPE_CHOICES, ModelCache, register_loader
from ..pipeline.node import Node, Param
from ..types import Detections, Sample

# "torch" and sam/onnx_encoder.py's BACKENDS, spelled out so this module does not import torch.
ENCODER_BACKENDS = ("auto", "torch", "onnxruntime", "openvino")


def _load_sam(cache: ModelCache, name: str, device: str, dtype: Any, image_encoder_backend: str = "auto"):
    from ..sam2 import load_sam_or_sam2

    return load_sam_or_sam2(name, device=device, dtype=dtype, image_encoder_backend=image_encoder_backend)


def _load_sam_predictor(cache: ModelCache, name: str, device: str, dtype: Any, model_kind: str = "sam"):
    # One predictor per model and precision, so its embedding cache (keyed by image content) is
    # shared by every node prompting that model: boxes and points on one image encode it once.
    # Reduced precision runs under autocast over the float32 weights (as `grounded segment
    # --dtype` does), which keeps the per-pixel mask logits in float32.
    from ..sam2 import predictor_for

    return predictor_for(cache.get(model_kind, name, device, None), autocast_dtype=dtype)


register_loader("sam", _load_sam)
register_loader("sam_predictor", _load_sam_predictor)
# The same models with the image encoder in a named runtime ("sam" and "sam_predictor" take the
# fastest installed for the model: sam/onnx_encoder.py).
for _backend in ENCODER_BACKENDS[1:]:
    register_loader(f"sam_{_backend}", partial(_load_sam, image_encoder_backend=_backend))
    register_loader(f"sam_predictor_{_backend}", partial(_load_sam_predictor, model_kind=f"sam_{_backend}"))


def sam_predictor(models: ModelCache, name_or_path: Any, device: Any = "auto", dtype: Any = None,
                  encoder_backend: str = "auto"):
    """The shared `SamPredictor` of that model in `models` (one embedding cache for every node
    using it); `dtype` bf16/fp16 runs it under autocast over the float32 model; `encoder_backend`
    "onnxruntime" or "openvino" runs its image encoder in that runtime (CPU), "auto" the fastest installed."""
    if encoder_backend not in ENCODER_BACKENDS:
        raise ValueError(f"unknown encoder_backend {encoder_backend!r}; use one of {list(ENCODER_BACKENDS)}")
    kind = "sam_predictor" if encoder_backend == "auto" else f"sam_predictor_{encoder_backend}"
    return models.get(kind, name_or_path, device, dtype)


MODEL_PARAMS = {
    "model": Param("mobile_sam", str, "SAM or SAM 2.1 checkpoint: known name (see `grounded weights`, e.g. "
                                      "sam2.1_hiera_tiny), file, folder or hub id"),
    "device": Param("auto", str, "cpu, cuda, cuda:1, ... or auto (a GPU when there is one)", fingerprint=False),
    "dtype": Param("fp32", str, "precision: bf16/fp16 run under autocast (mask logits stay fp32)", choices=DTYPE_CHOICES),
    "encoder_backend": Param("auto", str, "image encoder runtime: auto (the fastest installed: openvino for MobileSAM on a "
                                          "CPU, else torch), torch, onnxruntime or openvino (the last two: CPU, float32)",
                             choices=ENCODER_BACKENDS, fingerprint=False),
}


class _SamNode(Node):
    """Shared setup: the model's predictor from the run's model cache."""

    def setup(self, ctx) -> None:
        self.predictor = sam_predictor(ctx.models, self.model, self.device, self.dtype, self.encoder_backend)

    def close(self) -> None:
        self.predictor = None

    def _encode(self, images: List[np.ndarray], extra_cache: int = 0) -> None:
        """Encode the batch's images in one encoder batch; the predictor's cache (keyed by pixels)
        hands each embedding back when the image is set later."""
        if not images:
            return
        self.predictor.cache_size = max(self.predictor.cache_size, len(images) + extra_cache)
        self.predictor.set_images(images, batch_size=len(images))


class SegmentAuto(_SamNode):
    """Automatic masks for everything in the image (SAM over a point grid) -> detections with masks."""

    name = "segment_auto"
    reads = {"image": np.ndarray}
    writes = {"detections": Detections}
    params = {
        **MODEL_PARAMS,
        "points_per_side": Param(32, int, "prompt grid: points along each side"),
        "points_per_batch": Param(64, int, "prompts per decoder call"),
        "pred_iou_thresh": Param(0.88, float, "keep masks whose predicted IoU is at least this"),
        "stability_score_thresh": Param(0.95, float, "keep masks at least this stable under threshold changes"),
        "stability_score_offset": Param(1.0, float, "logit offset for the stability score"),
        "box_nms_thresh": Param(0.7, float, "box IoU above which duplicate masks are removed"),
        "crop_n_layers": Param(0, int, "extra passes over overlapping crops (finds small objects)"),
        "crop_nms_thresh": Param(0.7, float, "box IoU for duplicates between crops"),
        "crop_overlap_ratio": Param(512 / 1500, float, "overlap of neighbouring crops"),
        "crop_n_points_downscale_factor": Param(1, int, "fewer points per side in deeper crop layers"),
        "min_mask_region_area": Param(0, int, "fill holes and remove islands smaller than this (pixels)"),
    }

    def setup(self, ctx) -> None:
        from ..sam2.automatic import mask_generator

        super().setup(ctx)
        self.generator = mask_generator(
            self.predictor.model, points_per_side=self.points_per_side, points_per_batch=self.points_per_batch,
            pred_iou_thresh=self.pred_iou_thresh, stability_score_thresh=self.stability_score_thresh,
            stability_score_offset=self.stability_score_offset, box_nms_thresh=self.box_nms_thresh,
            crop_n_layers=self.crop_n_layers, crop_nms_thresh=self.crop_nms_thresh,
            crop_overlap_ratio=self.crop_overlap_ratio,
            crop_n_points_downscale_factor=self.crop_n_points_downscale_factor,
            min_mask_region_area=self.min_mask_region_area, output_mode="coco_rle", predictor=self.predictor,
        )
        self._crops = sum(4**i for i in range(self.crop_n_layers + 1))  # crops per image (layer i has 4**i)

    def close(self) -> None:
        super().close()
        self.generator = None

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        # The first crop of every image is the whole image: encoding the batch up front means the
        # generator finds each embedding in the cache.
        self._encode([s.image for s in samples], extra_cache=self._crops)
        for i, sample in enumerate(samples):
            dets, repeats = without_repeated_masks(self.generator.generate_detections(
                sample.image, progress=lambda done, total, i=i: self.report_progress(i + done / total, len(samples))))
            height, width = sample.image_size
            if min(height, width) < self.points_per_side:
                sample.note(f"the {width}x{height} image is smaller than the {self.points_per_side}x{self.points_per_side} "
                            f"point grid: several prompts fall on one pixel"
                            + (f"; {repeats} masks repeating another exactly were dropped" if repeats else ""))
            sample.detections = dets
        return samples


def without_repeated_masks(dets: Detections) -> Tuple[Detections, int]:
    """The detections with each mask once (the best-scoring of identical masks, in their order),
    and how many were dropped. A tiny image gives many identical masks, which box NMS cannot
    remove: the boxes of one-pixel masks have no area, so no overlap."""
    if not dets.has_masks or len(dets) < 2:
        return dets, 0
    order = np.argsort(-dets.scores, kind="stable") if dets.scores is not None else np.arange(len(dets))
    seen: Dict[str, int] = {}
    for i in order:
        seen.setdefault(dets.rles[i]["counts"], int(i))
    keep = np.sort(np.fromiter(seen.values(), dtype=np.int64))
    return (dets[keep], len(dets) - len(keep)) if len(keep) < len(dets) else (dets, 0)


class SegmentBoxes(_SamNode):
    """Masks for the detections' boxes (all boxes of an image in one decoder call) -> detections with masks."""

    name = "segment_boxes"
    reads = {"image": np.ndarray, "detections": Detections}
    writes = {"detections": Detections}
    params = {
        **MODEL_PARAMS,
        "boxes": Param(None, list, "box prompts in pixels, [[x0, y0, x1, y1], ...], the same for every image "
                                   "(else each item's detections)"),
        "multimask": Param(False, bool, "predict 3 masks per box and keep the best-scoring (else SAM's single mask)"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.boxes is not None:
            self.reads = {"image": np.ndarray}  # the prompts come with the node, not the sample
            self._boxes = boxes_from(self.boxes)

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        if self.boxes is not None:
            for sample in samples:
                sample.detections = Detections(self._boxes, image_size=sample.image_size)
        with_boxes = [s for s in samples if len(s.detections)]
        self._encode([s.image for s in with_boxes])
        for sample in samples:
            dets = sample.detections
            if not len(dets):
                sample.detections = dets.replace(rles=[], image_size=sample.image_size)
                continue
            height, width = sample.image_size
            # Detectors may put a box corner a little outside the image; SAM needs it inside.
            boxes = np.clip(dets.xyxy, 0, [width, height, width, height]) if self.boxes is None else dets.xyxy
            self.predictor.set_image(sample.image)
            masks, scores, _ = self.predictor.predict_many(boxes=boxes, multimask_output=self.multimask)
            best = scores.argmax(axis=1)
            rows = np.arange(len(best))
            data = dict(dets.data, mask_score=scores[rows, best].astype(np.float32))
            sample.detections = dets.replace(mask=masks[rows, best], data=data)
        return samples


class SegmentPoints(_SamNode):
    """Masks from point prompts (the `points` parameter, else the sample's points field) -> detections."""

    name = "segment_points"
    reads = {"image": np.ndarray, "points": list}
    writes = {"detections": Detections}
    params = {
        **MODEL_PARAMS,
        "points": Param(None, list, "prompts in pixels: [[x, y], ...] one point each, or [[[x, y, label], ...], ...] "
                                    "several points per prompt (label 1 foreground, 0 background)"),
        "box": Param(None, list, "a box [x0, y0, x1, y1] in pixels that goes with every point prompt"),
        "multimask": Param(True, bool, "predict 3 masks per prompt and keep the best-scoring (a single point is ambiguous)"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.points is not None:
            self.reads = {"image": np.ndarray}  # the prompts come with the node, not the sample
            self._prompts = prompts_from(self.points)
        self._box = None if self.box is None else boxes_from([self.box])[0]

    def process_batch(self, samples: List[Sample]) -> List[Sample]:
        self._encode([s.image for s in samples])
        for sample in samples:
            coords, labels = self._prompts if self.points is not None else prompts_from(sample.points)
            if len(coords) == 0:
                sample.detections = Detections.empty(sample.image_size, with_masks=True)
                continue
            self.predictor.set_image(sample.image)
            boxes = None if self._box is None else np.repeat(self._box[None], len(coords), axis=0)
            masks, scores, _ = self.predictor.predict_many(point_coords=coords, point_labels=labels, boxes=boxes,
                                                           multimask_output=self.multimask)
            best = scores.argmax(axis=1)
            rows = np.arange(len(best))
            point_lists = [[[float(x), float(y)] for (x, y), l in zip(c, lab) if l >= 0] for c, lab in zip(coords, labels)]
            sample.detections = Detections.from_masks(masks[rows, best], scores=scores[rows, best],
                                                      data={"point_coords": point_lists})
        return samples


def boxes_from(boxes: Sequence) -> np.ndarray:
    """Box prompts [[x0, y0, x1, y1], ...] -> an Nx4 float array, each box checked."""
    rows = []
    for box in boxes:
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
            raise ValueError(f"a box prompt is [x0, y0, x1, y1] in pixels, got {box!r}")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"box {list(box)} has x1 < x0 or y1 < y0; write it as [x0, y0, x1, y1]")
        rows.append([float(v) for v in box])
    return np.array(rows, np.float64).reshape(-1, 4)


def prompts_from(points: Optional[Sequence]) -> tuple:
    """Point prompts -> (coords NxKx2, labels NxK) for one decoder call. A prompt is [x, y],
    [x, y, label], or a list of those; prompts with fewer points are padded with label -1 (SAM's
    "no point")."""
    if points is None:
        raise ValueError("no point prompts: set the node's `points` parameter or give each item `points`")
    prompts = []
    for prompt in points:
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise ValueError(f"a point prompt is [x, y], [x, y, label] or a list of those, got {prompt!r}")
        group = [prompt] if isinstance(prompt[0], (int, float)) else list(prompt)
        rows = []
        for p in group:
            if not isinstance(p, (list, tuple)) or len(p) not in (2, 3):
                raise ValueError(f"a point is [x, y] or [x, y, label], got {p!r}")
            rows.append((float(p[0]), float(p[1]), int(p[2]) if len(p) == 3 else 1))
        prompts.append(rows)
    k = max((len(p) for p in prompts), default=0)
    coords = np.zeros((len(prompts), k, 2), np.float64)
    labels = -np.ones((len(prompts), k), np.int64)
    for i, rows in enumerate(prompts):
        for j, (x, y, label) in enumerate(rows):
            coords[i, j] = (x, y)
            labels[i, j] = label
    return coords, labels

"""SamAutomaticMaskGenerator: masks for everything in an image, from a grid of point prompts.

A drop-in for `segment_anything.SamAutomaticMaskGenerator`: the same arguments, the same records,
the same masks. Where it differs is in what it keeps in memory and how it spends time:

- The reference upsamples every decoder batch (points_per_batch x 3 masks) to full resolution as
  float logits, then filters: about 9 GB per batch for a 4000x3000 image. Here the predicted-IoU
  filter runs first, on the decoder's scores, and only the masks that pass are upsampled, a few at
  a time within a memory budget (`postprocess_memory_mb`), through `Sam.threshold_masks` (the
  reference's two interpolations and a threshold; on a CPU, the wing evaluates only the pixels near
  a contour: grounded/sam/cpu/masks.py).
- Every mask becomes RLE as soon as it is final (thresholded and past the filters), in one
  vectorised pass per chunk on the model's device, written straight into the full image's frame
  (the reference pads each crop's masks to full size first).
- The image crops go through the image encoder together, in batches (`encoder_batch_size`).
- Small-region removal works one mask at a time and never stacks full-size masks.
- `generate_detections` returns a `grounded.detections.Detections`; `progress` reports the work done.
"""

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .model import Sam
from .predictor import SamPredictor
from .utils.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    masks_to_rle_counts,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
Progress = Callable[[int, int], None]


class SamAutomaticMaskGenerator:
    def __init__(
        self,
        model: Sam,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        predictor: Optional[SamPredictor] = None,
        postprocess_memory_mb: float = 512,
        encoder_batch_size: int = 4,
    ) -> None:
        """Arguments as segment_anything's (see its docstring); in short:

        points_per_side / point_grids: the prompt grid (one of the two; grids are in [0, 1], one per
          crop layer). points_per_batch: prompts per decoder call. pred_iou_thresh,
          stability_score_thresh (with stability_score_offset): quality filters. box_nms_thresh:
          duplicate removal within a crop. crop_n_layers, crop_nms_thresh, crop_overlap_ratio,
          crop_n_points_downscale_factor: extra passes over overlapping crops (layer i has
          (2**i)**2 crops). min_mask_region_area: fill holes and drop islands smaller than this
          (needs opencv). output_mode: "binary_mask", "uncompressed_rle" or "coco_rle".

        Only here (keyword-only): predictor, a `SamPredictor` of `model` to prompt through (its
        embedding cache, e.g. one shared with other users of the model; by default a new one);
        postprocess_memory_mb bounds the full-resolution masks held at once (the chunk size adapts to
        the image size; results do not depend on it); encoder_batch_size is how many crops go through
        the image encoder together.
        """
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("Exactly one of points_per_side or point_grids must be provided.")
        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(points_per_side, crop_n_layers, crop_n_points_downscale_factor)
        else:
            self.point_grids = point_grids
        if len(self.point_grids) < crop_n_layers + 1:
            raise ValueError(f"{len(self.point_grids)} point grids for {crop_n_layers + 1} crop layers")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"Unknown output_mode {output_mode!r}; choose from {OUTPUT_MODES}.")
        if min_mask_region_area > 0:
            import cv2  # noqa: F401  (fail now, not after the whole image has been processed)

        if predictor is not None and predictor.model is not model:
            raise ValueError("predictor= must be a SamPredictor of the same model")
        self.predictor = predictor or SamPredictor(model, cache_size=sum(4**i for i in range(crop_n_layers + 1)))
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.mask_threshold = model.mask_threshold
        self.postprocess_memory_mb = postprocess_memory_mb
        self.encoder_batch_size = encoder_batch_size
        self.timings: Dict[str, float] = {}  # seconds spent in the last generate(), by stage

    @torch.no_grad()
    def generate(self, image: np.ndarray, *, progress: Optional[Progress] = None) -> List[Dict[str, Any]]:
        """Masks for an HxWx3 uint8 image (or anything `grounded.io.load_image` reads).

        Returns one record per mask: segmentation (HxW bool array, or an RLE dict per
        output_mode), area (int), bbox (XYWH list), predicted_iou, point_coords ([[x, y]]),
        stability_score and crop_box (XYWH list), as segment_anything's generator.
        progress(done, total) is called as batches of point prompts finish (total: all batches of
        all crops)."""
        mask_data = self._mask_data(image, progress)
        start = time.perf_counter()
        records = [self._record(mask_data, i) for i in range(len(mask_data["rles"]))]
        self.timings["postprocess"] += time.perf_counter() - start
        return records

    @torch.no_grad()
    def generate_detections(self, image: np.ndarray, *, progress: Optional[Progress] = None):
        """The masks of `generate` as a `grounded.detections.Detections`: RLE masks, their boxes
        (x1, y1 exclusive), scores = predicted IoU, and `stability_score`, `point_coords` and
        `crop_box` (XYWH) in `data`."""
        from ..detections import Detections

        mask_data = self._mask_data(image, progress)
        rles, boxes = mask_data["rles"], np.asarray(mask_data["boxes"], dtype=np.float32).reshape(-1, 4)
        nonempty = np.array([area_from_rle(r) > 0 for r in rles], dtype=bool)
        xyxy = np.where(nonempty[:, None], boxes + np.array([0, 0, 1, 1], np.float32), 0).astype(np.float32)
        data = {"stability_score": np.asarray(mask_data["stability_score"], dtype=np.float32),
                "point_coords": [[p.tolist()] for p in mask_data["points"]],
                "crop_box": [box_xyxy_to_xywh(b).tolist() for b in mask_data["crop_boxes"]]}
        return Detections(xyxy, rles=[coco_encode_rle(r) for r in rles], scores=mask_data["iou_preds"], data=data,
                          image_size=image.shape[:2] if isinstance(image, np.ndarray) else None)

    def _mask_data(self, image: np.ndarray, progress: Optional[Progress]) -> MaskData:
        self.timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        from ..io.image import is_unit_float_rgb, load_image

        # Fractions in [0, 1] go to the predictor as they are: SAM 2's takes them unrounded, as the official
        # generator does, SAM's rounds each crop as load_image rounds the whole (other images are scaled by
        # their own range, so they are converted whole, not crop by crop).
        if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
                and (image.dtype == np.uint8 or is_unit_float_rgb(image))):
            image = load_image(image)
        mask_data = self._generate_masks(image, progress)
        start = time.perf_counter()
        if self.min_mask_region_area > 0:
            mask_data = self.postprocess_small_regions(
                mask_data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        self.timings["postprocess"] += time.perf_counter() - start
        return mask_data

    def _record(self, mask_data: MaskData, idx: int) -> Dict[str, Any]:
        rle = mask_data["rles"][idx]
        if self.output_mode == "coco_rle":
            segmentation = coco_encode_rle(rle)
        elif self.output_mode == "binary_mask":
            segmentation = rle_to_mask(rle)
        else:
            segmentation = {"size": list(rle["size"]), "counts": np.asarray(rle["counts"]).tolist()}
        return {
            "segmentation": segmentation,
            "area": area_from_rle(rle),
            "bbox": box_xyxy_to_xywh(mask_data["boxes"][idx]).tolist(),
            "predicted_iou": mask_data["iou_preds"][idx].item(),
            "point_coords": [mask_data["points"][idx].tolist()],
            "stability_score": mask_data["stability_score"][idx].item(),
            "crop_box": box_xyxy_to_xywh(mask_data["crop_boxes"][idx]).tolist(),
        }

    def _generate_masks(self, image: np.ndarray, progress: Optional[Progress] = None) -> MaskData:
        from torchvision.ops.boxes import batched_nms, box_area

        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = [image[y0:y1, x0:x1, :] for x0, y0, x1, y1 in crop_boxes]
        batches = [-(-len(self.point_grids[i]) // self.points_per_batch) for i in layer_idxs]
        done = [0, sum(batches)]  # point batches finished, in all
        if progress is not None:
            progress(*done)

        # Encode every crop up front, several per encoder call; each is then made current in turn.
        start = time.perf_counter()
        self.predictor.set_images(crops, batch_size=self.encoder_batch_size)
        self.timings["encoder"] += time.perf_counter() - start

        data = self._no_masks()
        for index, (crop_box, layer_idx) in enumerate(zip(crop_boxes, layer_idxs)):
            self.predictor.select_image(index)
            data.cat(self._process_crop(crop_box, layer_idx, orig_size, progress, done))
        self.predictor.reset_image()

        start = time.perf_counter()
        if len(crop_boxes) > 1 and len(data["rles"]) > 0:
            # Remove duplicates between crops, preferring masks from smaller crops.
            scores = 1 / box_area(data["crop_boxes"])
            keep_by_nms = batched_nms(
                data["boxes"].float(), scores.to(data["boxes"].device), torch.zeros_like(data["boxes"][:, 0]),
                iou_threshold=self.crop_nms_thresh,
            )
            data.filter(keep_by_nms)
        data.to_numpy()
        self.timings["postprocess"] += time.perf_counter() - start
        return data

    def _process_crop(self, crop_box: List[int], crop_layer_idx: int, orig_size: Tuple[int, ...],
                      progress: Optional[Progress], done: List[int]) -> MaskData:
        from torchvision.ops.boxes import batched_nms

        cropped_im_size = self.predictor.original_size
        points_scale = np.array(cropped_im_size)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale

        data = self._no_masks()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            data.cat(self._process_batch(points, cropped_im_size, crop_box, orig_size))
            done[0] += 1
            if progress is not None:
                progress(*done)

        start = time.perf_counter()
        # Remove duplicates within this crop (boxes are still in the crop's frame; NMS does not mind).
        keep_by_nms = batched_nms(
            data["boxes"].float(), data["iou_preds"], torch.zeros_like(data["boxes"][:, 0]),
            iou_threshold=self.box_nms_thresh,
        )
        data.filter(keep_by_nms)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = torch.tensor([crop_box for _ in range(len(data["rles"]))], dtype=torch.int64).reshape(-1, 4)
        self.timings["postprocess"] += time.perf_counter() - start
        return data

    def _process_batch(
        self, points: np.ndarray, im_size: Tuple[int, ...], crop_box: List[int], orig_size: Tuple[int, ...]
    ) -> MaskData:
        start = time.perf_counter()
        low_res, iou_preds, points = self._decode_points(points, im_size)
        if low_res.device.type == "cuda":
            torch.cuda.synchronize()
        self.timings["decoder"] += time.perf_counter() - start
        start = time.perf_counter()

        # Filter by predicted IoU before anything is upsampled: it needs only the decoder's scores.
        if self.pred_iou_thresh > 0.0:
            keep = iou_preds > self.pred_iou_thresh
            low_res, iou_preds, points = low_res[keep], iou_preds[keep], points[keep.cpu()]

        parts = {"iou_preds": [], "points": [], "stability_score": [], "boxes": [], "rles": []}
        chunk_size = self._chunk_size(im_size)
        for first in range(0, len(low_res), chunk_size):
            chunk = slice(first, first + chunk_size)
            stability, kept, rles, boxes = self._filter_and_encode(low_res[chunk], im_size, crop_box, orig_size)
            parts["iou_preds"].append(iou_preds[chunk][kept])
            parts["points"].append(points[chunk][kept.cpu()])
            parts["stability_score"].append(stability[kept])
            parts["boxes"].append(boxes)
            parts["rles"] += [{"size": [orig_size[0], orig_size[1]], "counts": c} for c in rles]
        data = self._no_masks()
        for key, values in parts.items():
            if values:
                data[key] = values if key == "rles" else torch.cat(values)
        self.timings["postprocess"] += time.perf_counter() - start
        return data

    def _decode_points(self, points: np.ndarray, im_size: Tuple[int, ...]):
        """Low-res logits M x h x w and IoU predictions M of every mask of a batch of grid points, and
        each mask's point M x 2 (SAM 2's generator overrides it)."""
        predictor = self.predictor
        # Coordinates stay float64 into the prompt encoder, as the reference passes them.
        in_points = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        low_res, iou_preds = predictor.decode(in_points[:, None, :], in_labels[:, None], multimask_output=True)
        n_out = low_res.shape[1]
        return low_res.flatten(0, 1), iou_preds.flatten(0, 1), torch.as_tensor(points.repeat(n_out, axis=0))

    def _no_masks(self) -> MaskData:
        device = self.predictor.device
        return MaskData(
            rles=[], iou_preds=torch.zeros(0, device=device), points=torch.zeros(0, 2, dtype=torch.float64),
            stability_score=torch.zeros(0, device=device), boxes=torch.zeros(0, 4, dtype=torch.int64, device=device),
        )

    def _filter_and_encode(self, low_res: torch.Tensor, im_size, crop_box, orig_size):
        """Stability filter, threshold, box, crop-edge filter and RLE for a chunk of low-res logits.
        Returns the stability scores of all, the indices of the masks kept, their RLE counts and boxes."""
        model, threshold, offset = self.predictor.model, self.mask_threshold, self.stability_score_offset
        orig_h, orig_w = orig_size

        def masks_above(logits: torch.Tensor, at: float) -> torch.Tensor:
            return model.threshold_masks(logits[:, None], self.predictor.input_size, im_size, at)[:, 0]

        # The stability score: IoU of the masks at threshold +- offset, the high one inside the low one.
        # Row sums in int16, as the reference's calculate_stability_score.
        high = masks_above(low_res, threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
        low = masks_above(low_res, threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
        stability = high / low
        kept = torch.arange(len(stability), device=stability.device)
        if self.stability_score_thresh > 0.0:
            kept = kept[stability >= self.stability_score_thresh]
        masks = masks_above(low_res[kept], threshold)
        boxes = batched_mask_to_box(masks).long()  # (long: an empty batch gives float zeros)
        # Drop masks that touch a crop edge that is not an image edge: likely cut off.
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        kept, boxes = kept[inside], boxes[inside]
        return stability, kept, masks_to_rle_counts(masks[inside], crop_box, orig_h, orig_w), boxes

    def _chunk_size(self, im_size: Tuple[int, ...]) -> int:
        """How many masks to upsample at once within postprocess_memory_mb: float logits at the
        padded input and at full size (the reference's upsampling) and the boolean masks."""
        side = self.predictor.model.image_encoder.img_size
        per_mask = 4 * side * side + 6 * int(im_size[0]) * int(im_size[1])
        return max(1, int(self.postprocess_memory_mb * 2**20 // per_mask))

    @staticmethod
    def postprocess_small_regions(mask_data: MaskData, min_area: int, nms_thresh: float) -> MaskData:
        """Fills holes and removes islands smaller than min_area in every mask, then reruns box NMS
        (preferring unchanged masks) to drop new duplicates. Edits mask_data in place; one
        full-size mask at a time. Needs opencv."""
        from torchvision.ops.boxes import batched_nms

        if len(mask_data["rles"]) == 0:
            return mask_data
        new_rles, boxes, scores = [], [], []
        for rle in mask_data["rles"]:
            mask = rle_to_mask(rle)
            mask, changed = remove_small_regions(mask, min_area, mode="holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, min_area, mode="islands")
            unchanged = unchanged and not changed
            boxes.append(batched_mask_to_box(torch.as_tensor(np.ascontiguousarray(mask))))
            # score 1 for unchanged masks, 0 for changed ones: NMS prefers masks that needed no repair
            scores.append(float(unchanged))
            h, w = mask.shape
            new_rles.append(None if unchanged else {
                "size": [h, w], "counts": masks_to_rle_counts(torch.as_tensor(mask)[None], [0, 0, w, h], h, w)[0]
            })
        boxes = torch.stack(boxes)
        keep_by_nms = batched_nms(boxes.float(), torch.as_tensor(scores), torch.zeros_like(boxes[:, 0]), iou_threshold=nms_thresh)
        for i_mask in keep_by_nms.tolist():
            if scores[i_mask] == 0.0:
                mask_data["rles"][i_mask] = new_rles[i_mask]
                mask_data["boxes"][i_mask] = boxes[i_mask]  # numpy row from a tensor, as the reference
        mask_data.filter(keep_by_nms)
        return mask_data

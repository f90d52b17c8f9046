"""SamAutomaticMaskGenerator: masks for everything in an image, from a grid of point prompts.

A drop-in for `segment_anything.SamAutomaticMaskGenerator`: the same arguments, the same records,
the same masks. Where it differs is in what it keeps in memory and how it spends time:

- The reference upsamples every decoder batch (points_per_batch x 3 masks) to full resolution as
  float logits, then filters: about 9 GB per batch for a 4000x3000 image. Here the predicted-IoU
  filter runs first, on the decoder's scores, and only the masks that pass are upsampled, a few at
  a time within a memory budget (`postprocess_memory_mb`).
- Images up to a few times the model's input size go through the reference's own
  `postprocess_masks`, so the stability score is computed on the very same full-resolution logits.
  Larger images never build those logits: the last (bilinear) upsampling step is evaluated only
  where a threshold decision needs it, with the reference's own weights (utils/sparse_upsample.py),
  so counts and masks agree up to pixels whose logit sits on a threshold within float rounding.
- Every mask becomes RLE as soon as it is final (thresholded and past the filters), in one
  vectorised pass per chunk on the model's device, written straight into the full image's frame
  (the reference pads each crop's masks to full size first).
- The image crops go through the image encoder together, in batches (`encoder_batch_size`).
- Small-region removal works one mask at a time and never stacks full-size masks.
"""

import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .model import Sam
from .predictor import SamPredictor
from .utils.amg import (
    MaskData,
    area_from_rle,
    batch_iterator,
    batched_mask_to_box,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    calculate_stability_score,
    coco_encode_rle,
    generate_crop_boxes,
    is_box_near_crop_edge,
    masks_to_rle_counts,
    remove_small_regions,
    rle_to_mask,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from .utils.sparse_upsample import SparseUpsampler

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Above this ratio of image pixels to resized-input pixels, masks are upsampled cell by cell
# (utils/sparse_upsample.py); below it, building full-size logits is as cheap (measured on CPU).
SPARSE_MIN_UPSCALE = 3


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

        Only here: postprocess_memory_mb bounds the full-resolution logits held at once (the
        chunk size adapts to the image size; results do not depend on it); encoder_batch_size is
        how many crops go through the image encoder together.
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

        self.predictor = SamPredictor(model, cache_size=sum(4**i for i in range(crop_n_layers + 1)))
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
        self.postprocess_memory_mb = postprocess_memory_mb
        self.encoder_batch_size = encoder_batch_size
        self.timings: Dict[str, float] = {}  # seconds spent in the last generate(), by stage

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """Masks for an HxWx3 uint8 image (or anything `grounded.io.load_image` reads).

        Returns one record per mask: segmentation (HxW bool array, or an RLE dict per
        output_mode), area (int), bbox (XYWH list), predicted_iou, point_coords ([[x, y]]),
        stability_score and crop_box (XYWH list), as segment_anything's generator."""
        self.timings = {"encoder": 0.0, "decoder": 0.0, "postprocess": 0.0}
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            from ..io.image import load_image

            image = load_image(image)
        mask_data = self._generate_masks(image)
        start = time.perf_counter()
        if self.min_mask_region_area > 0:
            mask_data = self.postprocess_small_regions(
                mask_data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        records = [self._record(mask_data, i) for i in range(len(mask_data["rles"]))]
        self.timings["postprocess"] += time.perf_counter() - start
        return records

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

    def _generate_masks(self, image: np.ndarray) -> MaskData:
        from torchvision.ops.boxes import batched_nms, box_area

        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        crops = [image[y0:y1, x0:x1, :] for x0, y0, x1, y1 in crop_boxes]

        # Encode every crop up front, several per encoder call; the predictor's cache (keyed by
        # the pixels) then hands each embedding back when its crop is set below.
        start = time.perf_counter()
        self.predictor.set_images(crops, batch_size=self.encoder_batch_size)
        self.timings["encoder"] += time.perf_counter() - start

        data = self._no_masks()
        for crop, crop_box, layer_idx in zip(crops, crop_boxes, layer_idxs):
            self.predictor.set_image(crop)
            data.cat(self._process_crop(crop_box, layer_idx, orig_size))
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

    def _process_crop(self, crop_box: List[int], crop_layer_idx: int, orig_size: Tuple[int, ...]) -> MaskData:
        from torchvision.ops.boxes import batched_nms

        cropped_im_size = self.predictor.original_size
        points_scale = np.array(cropped_im_size)[None, ::-1]
        points_for_image = self.point_grids[crop_layer_idx] * points_scale

        data = self._no_masks()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            data.cat(self._process_batch(points, cropped_im_size, crop_box, orig_size))

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

    def _decode(self, points: np.ndarray, im_size: Tuple[int, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (N x 3 x 256 x 256) and predicted IoUs (N x 3) for single-point prompts."""
        predictor, model = self.predictor, self.predictor.model
        # Coordinates stay float64 into the prompt encoder, as the reference passes them.
        in_points = torch.as_tensor(predictor.transform.apply_coords(points, im_size), device=predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        with predictor._precision():
            sparse, dense = model.prompt_encoder(points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None)
            low_res, iou_preds = model.mask_decoder(
                image_embeddings=predictor.features,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
                shared_products=predictor.shared_decoder_products(),
            )
        return low_res.float(), iou_preds.float()

    def _process_batch(
        self, points: np.ndarray, im_size: Tuple[int, ...], crop_box: List[int], orig_size: Tuple[int, ...]
    ) -> MaskData:
        start = time.perf_counter()
        low_res, iou_preds = self._decode(points, im_size)
        if low_res.device.type == "cuda":
            torch.cuda.synchronize()
        self.timings["decoder"] += time.perf_counter() - start
        start = time.perf_counter()
        n_out = low_res.shape[1]
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        points = torch.as_tensor(points.repeat(n_out, axis=0))

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

    def _no_masks(self) -> MaskData:
        device = self.predictor.device
        return MaskData(
            rles=[], iou_preds=torch.zeros(0, device=device), points=torch.zeros(0, 2, dtype=torch.float64),
            stability_score=torch.zeros(0, device=device), boxes=torch.zeros(0, 4, dtype=torch.int64, device=device),
        )

    def _filter_and_encode(self, low_res: torch.Tensor, im_size, crop_box, orig_size):
        """Stability filter, threshold, box, crop-edge filter and RLE for a chunk of low-res logits.
        Returns the stability scores of all, the indices of the masks kept, their RLE counts and boxes."""
        model, threshold, offset = self.predictor.model, self.predictor.model.mask_threshold, self.stability_score_offset
        orig_h, orig_w = orig_size
        h, w = self.predictor.input_size
        upsampler = self._sparse_upsampler(im_size)
        if upsampler is None:
            # Small images: the reference's upsampling, in full, a few masks at a time.
            logits = model.postprocess_masks(low_res[:, None], (h, w), im_size)[:, 0]
            stability = calculate_stability_score(logits, threshold, offset)
        else:
            # Large images: the same upsampling's first step, then facts about the second from its cells.
            size = model.image_encoder.img_size
            logits = F.interpolate(low_res[:, None], (size, size), mode="bilinear", align_corners=False)
            logits = logits[:, 0, :h, :w].contiguous()
            counts = upsampler.count_above(logits, [threshold + offset, threshold - offset]).int()
            stability = counts[:, 0] / counts[:, 1]  # int32 / int32, as calculate_stability_score
        kept = torch.arange(len(stability), device=stability.device)
        if self.stability_score_thresh > 0.0:
            kept = kept[stability >= self.stability_score_thresh]
        if upsampler is None:
            masks = logits[kept] > threshold
            del logits
            boxes = batched_mask_to_box(masks).long()  # (long: an empty batch gives float zeros)
        else:
            rles, boxes = upsampler.encode(logits[kept], threshold, crop_box, orig_size)
        # Drop masks that touch a crop edge that is not an image edge: likely cut off.
        inside = ~is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        kept, boxes = kept[inside], boxes[inside]
        if upsampler is None:
            rles = masks_to_rle_counts(masks[inside], crop_box, orig_h, orig_w)
        else:
            rles = [c for c, ok in zip(rles, inside.tolist()) if ok]
        return stability, kept, rles, boxes

    def _sparse_upsampler(self, im_size) -> Optional[SparseUpsampler]:
        """The cell-based upsampler when the image has several times the pixels of the model's
        resized input (its cost follows the input's size, the full path's the image's), else None."""
        H, W = int(im_size[0]), int(im_size[1])
        h, w = self.predictor.transform.get_preprocess_shape(H, W, self.predictor.model.image_encoder.img_size)
        if not (H >= h and W >= w and H * W > SPARSE_MIN_UPSCALE * h * w):
            return None
        return SparseUpsampler((h, w), (H, W), self.predictor.device)

    def _chunk_size(self, im_size: Tuple[int, ...]) -> int:
        """How many masks to upsample at once within postprocess_memory_mb: float logits at the
        padded input size, plus (full path) full-size logits and masks or (cell path) per-cell maps."""
        side = self.predictor.model.image_encoder.img_size
        h, w = self.predictor.input_size
        if self._sparse_upsampler(im_size) is None:
            per_mask = 4 * side * side + 7 * int(im_size[0]) * int(im_size[1])
        else:
            per_mask = 4 * side * side + 24 * h * w
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

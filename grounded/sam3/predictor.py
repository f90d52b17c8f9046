"""`Sam3Predictor`: SAM 3's interactive tracker (`Sam3TrackerModel`) behind grounded's predictor
interface (`set_image`, `predict`, `predict_many`: points, boxes, low-res masks, multimask), on the
image features the concept model computed (`Sam3.features`): an image segmented by phrases and then
clicked on is encoded once.

Prompts are in image pixels, as for `SamPredictor`; they are scaled to the model's square input
frame as `Sam3TrackerProcessor` scales them, masks are upscaled and thresholded at 0 as its
`post_process_masks` does. Point labels: 1 object, 0 background, -1 no point (padding). A low-res
mask prompt is 1 x 288 x 288 logits for facebook/sam3 (`mask_input_size`): a previous `low_res`
output, or `mask_prompt(mask)` of a binary mask.

`correct_with_clicks` corrects concept results: each detection that gets clicks is prompted again
with its own mask (`mask_prompt`) and its clicks, all in one tracker call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
import torch

from ..sam import PromptError
from ..sam.predictor import check_inside
from ..types import Detections

if TYPE_CHECKING:
    from .model import Sam3


class Sam3Predictor:
    def __init__(self, sam3: "Sam3") -> None:
        sam3.require_tracker()
        self.sam3, self.model = sam3, sam3.tracker
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return self.sam3.device

    @property
    def mask_input_size(self) -> Tuple[int, int]:
        return tuple(self.model.prompt_encoder.mask_input_size)

    # ---- images -------------------------------------------------------------------------------

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Use an image (HxWx3 uint8 array, or anything `grounded.io.load_image` reads): its features
        from the shared cache, else encoded now."""
        self.set_images([image], image_format)

    def set_images(self, images: Sequence, image_format: str = "RGB", batch_size: int = 4) -> None:
        """Encode several images (`batch_size` per encoder call) into the shared cache; the first is set."""
        from ..io.image import load_image

        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        prepared = [load_image(im) for im in images]
        prepared = [np.ascontiguousarray(im[..., ::-1]) if image_format == "BGR" else im for im in prepared]
        features = self.sam3.features(prepared, batch_size=batch_size)
        if features:
            self._features = features[0]
            self.embeddings = self.sam3.tracker_embeddings(features[0])
            self.original_size = features[0].original_size
            self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        self._require_image()
        return self.embeddings[-1]

    def reset_image(self) -> None:
        self._features = self.embeddings = self.original_size = None
        self.is_image_set = False

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    # ---- prompts ------------------------------------------------------------------------------

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output: bool = True,
                return_logits: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt: points Kx2 with labels K, a box [x0, y0, x1, y1], a low-res mask 1xhxw.
        Returns masks CxHxW (bool, or logits), scores C (predicted IoU) and low-res logits Cxhxw."""
        if box is not None and np.asarray(box).size != 4:
            raise PromptError(f"box must have 4 numbers (x0, y0, x1, y1), got shape {np.shape(box)}; "
                              "use predict_many for several boxes")
        masks, scores, low_res = self.predict_many(
            None if point_coords is None else np.asarray(point_coords)[None],
            None if point_labels is None else np.asarray(point_labels)[None],
            None if box is None else np.asarray(box, np.float64).reshape(1, 4),
            None if mask_input is None else np.asarray(mask_input)[None], multimask_output, return_logits)
        return masks[0], scores[0], low_res[0]

    @torch.no_grad()
    def predict_many(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     multimask_output: bool = True, return_logits: bool = False
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N prompts in one tracker call: point_coords NxKx2 with point_labels NxK, boxes Nx4,
        mask_input Nx1xhxw (any combination with the same N). Returns masks NxCxHxW, scores NxC and
        low-res logits NxCxhxw."""
        self._require_image()
        points, labels, boxes, masks, n = self._prompt_tensors(point_coords, point_labels, boxes, mask_input)
        if n == 0:  # no prompts: no masks
            c, (h, w) = 3 if multimask_output else 1, self.mask_input_size
            return (np.zeros((0, c, *self.original_size), np.float32 if return_logits else bool),
                    np.zeros((0, c), np.float32), np.zeros((0, c, h, w), np.float32))
        dtype = self.sam3.dtype
        out = self.model(image_embeddings=[e.expand(n, *e.shape[1:]) for e in self.embeddings],
                         input_points=None if points is None else points.to(self.device, dtype),
                         input_labels=None if labels is None else labels.to(self.device),
                         input_boxes=None if boxes is None else boxes.to(self.device, dtype),
                         input_masks=None if masks is None else masks.to(self.device, dtype),
                         multimask_output=multimask_output)
        low_res = out.pred_masks[:, 0].float()  # N x C x h x w
        full = torch.nn.functional.interpolate(low_res, self.original_size, mode="bilinear", align_corners=False)
        full = full if return_logits else full > 0
        return full.cpu().numpy(), out.iou_scores[:, 0].float().cpu().numpy(), low_res.cpu().numpy()

    def _prompt_tensors(self, point_coords, point_labels, boxes, mask_input):
        """Prompts in image pixels, checked, as the tracker's tensors (one prompt per batch row)."""
        height, width = self.original_size
        side = self.sam3.image_size
        counts = {}
        points = labels = box_t = mask_t = None
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_labels must be supplied with point_coords (1 object, 0 background, -1 padding)")
        if point_coords is not None:
            coords, labs = np.asarray(point_coords, np.float64), np.asarray(point_labels)
            if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
                raise PromptError(f"point_coords must be NxKx2 (K >= 1), got shape {coords.shape}")
            if labs.shape != coords.shape[:2]:
                raise PromptError(f"point_labels has shape {labs.shape} for point_coords {coords.shape}: one label per point")
            if not np.isin(labs, (-1, 0, 1)).all():
                raise PromptError(f"point labels are 1 (object), 0 (background) or -1 (padding), got {np.unique(labs).tolist()}")
            check_inside(coords.reshape(-1, 2)[labs.reshape(-1) >= 0], width, height, "point")
            points = torch.tensor(coords, dtype=torch.float32)[:, None]
            points[..., 0] = points[..., 0] * (side / width)  # as Sam3TrackerProcessor scales them
            points[..., 1] = points[..., 1] * (side / height)
            labels, counts["points"] = torch.as_tensor(labs, dtype=torch.int64)[:, None], len(coords)
        if boxes is not None:
            b = np.asarray(boxes, np.float64).reshape(-1, 4)
            if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
                raise PromptError(f"box {b[(b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])][0].tolist()} has x1 < x0 or "
                                  "y1 < y0: boxes are (x0, y0, x1, y1)")
            check_inside(b.reshape(-1, 2), width, height, "box corner")
            box_t = torch.tensor(b, dtype=torch.float32).reshape(-1, 2, 2)
            box_t[..., 0] = box_t[..., 0] * (side / width)
            box_t[..., 1] = box_t[..., 1] * (side / height)
            box_t, counts["boxes"] = box_t.reshape(-1, 1, 4), len(b)
        if mask_input is not None:
            m = np.asarray(mask_input, np.float32)
            if m.ndim != 4 or m.shape[1] != 1 or m.shape[2:] != self.mask_input_size:
                h, w = self.mask_input_size
                raise PromptError(f"mask_input must be Nx1x{h}x{w} low-res logits (a previous low_res output, or "
                                  f"mask_prompt(mask)), got shape {m.shape}")
            mask_t, counts["mask_input"] = torch.from_numpy(m), len(m)
        if len(set(counts.values())) > 1:
            raise PromptError(f"prompt counts differ: {counts}")
        return points, labels, box_t, mask_t, next(iter(counts.values()), 1)


def mask_prompt(mask: np.ndarray, size: Tuple[int, int] = (288, 288)) -> np.ndarray:
    """A binary HxW mask as a 1 x h x w low-res mask prompt: resized to `size` (the tracker's
    `mask_input_size`; bilinear with antialiasing, as the tracker resizes a mask prompt of another
    size) and mapped to logits of +/-10, the scale SAM 2's trackers give a mask used as a prompt."""
    tensor = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    low = torch.nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return (low[0] * 20.0 - 10.0).numpy()


def correct_with_clicks(predictor: Sam3Predictor, image: np.ndarray, dets: Detections,
                        points: Optional[Sequence]) -> Detections:
    """`dets` (with masks) corrected by clicks ([x, y] or [x, y, label], label 1 object, 0
    background): a click belongs to the smallest mask it falls in, else to the detection whose box
    centre is nearest; each detection with clicks is prompted again with its own mask
    (`mask_prompt`) plus its clicks, together in one tracker call (single-mask output)."""
    from ..prompting import check_clicks_inside, clicks_per_target, parse_clicks

    coords, labels = parse_clicks(points)
    if not len(coords) or not len(dets):
        return dets
    check_clicks_inside(coords, image)
    owners = np.array([click_owner(dets, xy) for xy in coords])
    targets, prompt_coords, prompt_labels = clicks_per_target(coords, labels, owners)
    prompts = np.stack([mask_prompt(dets.mask_of(t), predictor.mask_input_size) for t in targets])
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_many(prompt_coords, prompt_labels, mask_input=prompts, multimask_output=False)
    rles, mask_score = list(dets.rles), np.asarray(dets.data.get("mask_score", np.full(len(dets), np.nan)), np.float32)
    mask_score = mask_score.copy()
    refined = np.zeros(len(dets), bool)
    boxes = dets.xyxy.copy()
    from ..rle import encode_masks, rle_boxes_xyxy

    for row, t in enumerate(targets):
        rles[t] = encode_masks(masks[row, :1])[0]
        if masks[row, 0].any():
            boxes[t] = rle_boxes_xyxy([rles[t]])[0]
        mask_score[t], refined[t] = scores[row, 0], True
    return dets.replace(xyxy=boxes, rles=rles, data=dict(dets.data, mask_score=mask_score, refined=refined))


def click_owner(dets: Detections, xy: np.ndarray) -> int:
    """The detection a click belongs to: the smallest mask holding it, else the nearest box centre."""
    x, y = int(xy[0]), int(xy[1])
    holding = [i for i in range(len(dets)) if dets.mask_of(i)[y, x]]
    if holding:
        return min(holding, key=lambda i: dets.area[i])
    centres = (dets.xyxy[:, :2] + dets.xyxy[:, 2:]) / 2
    return int(np.argmin(np.linalg.norm(centres - xy, axis=1)))

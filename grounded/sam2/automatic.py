"""SAM2AutomaticMaskGenerator: a drop-in for `sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`
(the same parameters, defaults and records), on grounded's SAM mask generator
(`grounded.sam.automatic`): predicted-IoU filtering before any upsampling, masks upsampled a chunk at a
time within a memory budget, RLE straight into the image's frame, crops encoded in batches,
`generate_detections` and `progress`. Only the decoding of a batch of grid points is SAM 2's own:
prompts normalised as SAM 2 does, `multimask_output`, the optional mask-to-mask refinement
(`use_m2m`) and hole/sprinkle filling of the low-res masks (the official generator asks its predictor
for it with `min_mask_region_area`; here it runs on every device)."""

from typing import List, Optional, Tuple

import numpy as np
import torch

from ..sam.automatic import SamAutomaticMaskGenerator
from ..sam.utils.amg import batch_iterator
from .fill import fill_holes_and_sprinkles
from .model import Sam2
from .predictor import SAM2ImagePredictor


class SAM2AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    def __init__(
        self,
        model: Sam2,
        points_per_side: Optional[int] = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Optional[List[np.ndarray]] = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        *,
        predictor: Optional[SAM2ImagePredictor] = None,
        postprocess_memory_mb: float = 512,
        encoder_batch_size: int = 4,
        **kwargs,
    ) -> None:
        """Arguments as the official generator's (see `grounded.sam.SamAutomaticMaskGenerator` for the
        shared ones), plus mask_threshold (the logit cutoff), use_m2m (refine every mask once with its
        own low-res logits as mask prompt) and multimask_output (three masks per point, else one).
        min_mask_region_area also fills holes and removes sprinkles up to that area in the low-res
        masks, as the official generator's predictor does. Keyword-only, grounded's: predictor,
        postprocess_memory_mb, encoder_batch_size."""
        if not isinstance(model, Sam2):
            raise TypeError(f"SAM2AutomaticMaskGenerator takes a SAM 2 model (grounded.sam2.Sam2), not {type(model).__name__}")
        predictor = predictor or SAM2ImagePredictor(model, max_hole_area=min_mask_region_area,
                                                    max_sprinkle_area=min_mask_region_area,
                                                    cache_size=sum(4**i for i in range(crop_n_layers + 1)))
        super().__init__(model, points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
                         stability_score_offset, box_nms_thresh, crop_n_layers, crop_nms_thresh, crop_overlap_ratio,
                         crop_n_points_downscale_factor, point_grids, min_mask_region_area, output_mode,
                         predictor=predictor, postprocess_memory_mb=postprocess_memory_mb,
                         encoder_batch_size=encoder_batch_size)
        self.mask_threshold = mask_threshold
        self.use_m2m = use_m2m
        self.multimask_output = multimask_output

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs) -> "SAM2AutomaticMaskGenerator":
        from .build import from_pretrained

        return cls(from_pretrained(model_id), **kwargs)

    def _decode_points(self, points: np.ndarray, im_size: Tuple[int, ...]):
        predictor = self.predictor
        points = torch.as_tensor(points, dtype=torch.float32)  # float32, as the official generator
        in_points = predictor.transform.apply_coords(points, im_size).to(predictor.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        low_res, iou_preds = predictor.decode(in_points[:, None, :], in_labels[:, None],
                                              multimask_output=self.multimask_output)
        n_out = low_res.shape[1]
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        points = points.repeat_interleave(n_out, dim=0)
        if self.use_m2m:
            low_res, iou_preds = self._refine(in_points.repeat_interleave(n_out, dim=0), low_res)
        if predictor.max_hole_area > 0 or predictor.max_sprinkle_area > 0:
            low_res = fill_holes_and_sprinkles(low_res[:, None], predictor.mask_threshold, predictor.max_hole_area,
                                               predictor.max_sprinkle_area)[:, 0]
        return low_res, iou_preds, points

    def _refine(self, in_points: torch.Tensor, low_res: torch.Tensor):
        """One mask-to-mask step: each mask's point again, with its clamped logits as mask prompt."""
        refined, ious = [], []
        labels = torch.ones(in_points.shape[0], dtype=torch.int, device=in_points.device)
        for points, point_labels, logits in batch_iterator(self.points_per_batch, in_points, labels,
                                                           torch.clamp(low_res, -32.0, 32.0)):
            masks, iou = self.predictor.decode(points[:, None, :], point_labels[:, None], mask_input=logits[:, None],
                                               multimask_output=False)
            refined.append(masks[:, 0])
            ious.append(iou[:, 0])
        return torch.cat(refined), torch.cat(ious)


def mask_generator(model, **kwargs) -> SamAutomaticMaskGenerator:
    """The mask generator of a model: `SAM2AutomaticMaskGenerator` for SAM 2, grounded.sam's
    `SamAutomaticMaskGenerator` for SAM, with the same arguments."""
    if isinstance(model, Sam2):
        return SAM2AutomaticMaskGenerator(model, **kwargs)
    return SamAutomaticMaskGenerator(model, **kwargs)

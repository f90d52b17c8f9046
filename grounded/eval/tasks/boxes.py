"""`boxes`: each object prompted with its ground-truth box (one mask out); mIoU overall and by COCO
area range (small < 32^2, medium < 96^2, large, by the annotation's area)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..datasets import EvalImage
from ..masks import area_range, decode, mask_iou
from ..segmenters import Segmenter
from ..stats import mean_ci
from .base import Records, Summary, Task, xywh_to_xyxy

RANGES = ("small", "medium", "large")


class BoxesTask(Task):
    name = "boxes"
    headline = ("mIoU", "mIoU_small", "mIoU_medium", "mIoU_large")

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        objects = item.prompts
        if not objects:
            return {"objects": []}
        h, w = image.shape[:2]
        boxes = np.stack([xywh_to_xyxy(o.bbox, w, h) for o in objects])
        segmenter.set_image(image)
        masks, scores, _ = segmenter.predict(boxes=boxes, multimask=False)
        ious = mask_iou(masks[:, 0], decode([o.rle for o in objects]))
        return {"objects": [{"id": o.id, "area": o.area, "iou": float(i), "score": float(s)}
                            for o, i, s in zip(objects, ious, scores[:, 0])]}

    def summarize(self, records: Records, variant: str) -> Summary:
        objects = [o for _, r in records for o in r["objects"]]
        opts = self.options
        metrics = {"mIoU": mean_ci([o["iou"] for o in objects], opts.bootstrap, opts.seed)}
        for label in RANGES:
            metrics[f"mIoU_{label}"] = mean_ci([o["iou"] for o in objects if area_range(o["area"]) == label],
                                               opts.bootstrap, opts.seed)
        return Summary(metrics)

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        from ..plots import bar_plot

        groups = ["all", *RANGES]
        keys = ["mIoU", *(f"mIoU_{r}" for r in RANGES)]
        values = {label: [s.metrics[k].to_json() if s.metrics[k].n else None for k in keys] for label, s in summaries.items()}
        path = out_dir / "boxes_miou_by_area.png"
        bar_plot(groups, values, path, "mIoU", f"Box prompts: mIoU by object size ({self.dataset.name})")
        return [path]

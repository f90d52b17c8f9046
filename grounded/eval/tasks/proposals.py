"""`proposals`: SAM's automatic masks as class-agnostic object proposals, ranked by predicted IoU ->
mask average recall at 10, 100 and 1000 proposals over IoU 0.50:0.95, overall and by area range, as
COCOeval computes it with `useCats=0` (checked against it in the tests). The generator's settings are
its defaults unless `--amg KEY=VALUE` changes them; the proposals are written to
`proposals/<model>.json` as a COCO results file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..coco_metrics import AREA_LABELS, IOU_THRESHOLDS, Detection, Match, Truth, evaluate_image
from ..datasets import EvalImage
from ..masks import to_rle
from ..segmenters import Segmenter
from ..stats import mean_ci
from .base import Records, Summary, Task

MAX_DETS = (10, 100, 1000)


def truths(item: EvalImage) -> List[Truth]:
    return [Truth(o.rle, o.area, o.category_id, crowd=o.crowd, ignore=o.ignore) for o in item.instances]


def recall_per_object(records: Records, area: str, k: int) -> List[float]:
    """Per counted ground-truth object: the fraction of IoU thresholds at which one of the first k
    proposals matched it (the object's share of COCO's average recall)."""
    out = []
    for _, record in records:
        rank = Match.from_json(record["matches"][area]).gt_rank
        out += (((rank >= 0) & (rank < k)).mean(axis=0)).tolist()
    return out


class ProposalsTask(Task):
    name = "proposals"
    headline = ("AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000")

    def settings(self):
        return {"amg": dict(self.options.amg), "max_proposals": self.options.max_proposals}

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        # The generator sets the image itself (grounded's finds the embedding in its predictor's cache).
        records = segmenter.generate(image, dict(self.options.amg))
        records = sorted(records, key=lambda r: -r["predicted_iou"])[: self.options.max_proposals]
        h, w = image.shape[:2]
        dts = [Detection(to_rle(r["segmentation"], h, w), float(r["predicted_iou"]), 1) for r in records]
        matches = evaluate_image(dts, truths(item), sorted(self.dataset.categories), max(MAX_DETS), use_cats=False)
        return {"matches": {a: (m or Match.empty()).to_json() for (_, a), m in matches.items()},
                "predictions": [{"segmentation": d.rle, "score": d.score} for d in dts]}

    def summarize(self, records: Records, variant: str) -> Summary:
        opts = self.options
        metrics = {}
        for k in MAX_DETS:
            metrics[f"AR@{k}"] = mean_ci(recall_per_object(records, "all", k), opts.bootstrap, opts.seed)
        for area in AREA_LABELS[1:]:
            metrics[f"AR_{area}@{MAX_DETS[-1]}"] = mean_ci(recall_per_object(records, area, MAX_DETS[-1]),
                                                          opts.bootstrap, opts.seed)
        ranks = [Match.from_json(r["matches"]["all"]).gt_rank for _, r in records]
        ranks = np.concatenate(ranks, axis=1) if ranks else np.zeros((len(IOU_THRESHOLDS), 0))
        curve = {str(k): [{"value": float(((row >= 0) & (row < k)).mean()) if row.size else float("nan")} for row in ranks]
                 for k in MAX_DETS}
        n_props = [len(r["predictions"]) for _, r in records]
        return Summary(metrics, curves={"recall_vs_iou": curve},
                       extra={"proposals_per_image": float(np.mean(n_props)) if n_props else 0.0})

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        from ..plots import curve_plot

        series = {f"{label} @{k}": s.curves["recall_vs_iou"][str(k)] for label, s in summaries.items() for k in MAX_DETS}
        path = out_dir / "proposals_recall_vs_iou.png"
        curve_plot(series, path, xlabel="IoU threshold", ylabel="recall", x_values=IOU_THRESHOLDS,
                   title=f"Object proposals: recall by IoU threshold ({self.dataset.name})")
        return [path]

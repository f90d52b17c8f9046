"""`instances`: boxes from a detector prompt SAM (one mask per box, the box's score and category kept)
-> mask AP as COCOeval computes it (LVISEval for LVIS files: 300 detections per image, federated
categories, APr/APc/APf). The boxes come from a COCO results file of any detector (`--detections`)
or from grounded's Grounding DINO (`--detector`) prompted with the data set's category names. The
masks are written to `instances/<model>.json` as a COCO results file."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..coco_metrics import (AREA_LABELS, Detection, Match, accumulate, coco_summary, evaluate_image,
                            limit_per_image, lvis_summary, precision_recall, mean_valid)
from ..datasets import DatasetError, EvalImage
from ..masks import encode
from ..segmenters import Segmenter
from ..stats import Stat, resampled_ci
from .base import Records, Summary, Task, xywh_to_xyxy
from .proposals import truths

COCO_MAX_DETS = (1, 10, 100)
AP_DRAWS = 200  # bootstrap draws for the AP intervals
LVIS_MAX_DETS = (300,)


def read_detections(path: str, dataset) -> Tuple[Dict[int, List[dict]], Dict[str, int]]:
    """A COCO results file grouped by image id; entries of images or categories the data set does not
    have are counted and left out. An error if the file is unreadable or nothing in it is usable."""
    try:
        entries = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read detections {path}: {err}") from None
    if not isinstance(entries, list) or any(not isinstance(e, dict) or not {"image_id", "bbox", "score"} <= set(e)
                                            for e in entries):
        raise DatasetError(f"{path} is not a COCO results file: a list of {{image_id, category_id, bbox, score}}")
    images = {im.id for im in dataset.images}
    grouped: Dict[int, List[dict]] = defaultdict(list)
    skipped = {"unknown image id": 0, "unknown category id": 0, "zero-area box": 0}
    for e in entries:
        if e["image_id"] not in images:
            skipped["unknown image id"] += 1
        elif int(e.get("category_id", 1)) not in dataset.categories:
            skipped["unknown category id"] += 1
        elif e["bbox"][2] <= 0 or e["bbox"][3] <= 0:
            skipped["zero-area box"] += 1
        else:
            grouped[e["image_id"]].append(e)
    if entries and not grouped:
        some = sorted({str(e["image_id"]) for e in entries})[:5]
        raise DatasetError(f"none of the {len(entries)} detections in {path} belong to the data set's images and "
                           f"categories (image ids {', '.join(some)} ...)")
    return grouped, skipped


class InstancesTask(Task):
    name = "instances"
    headline = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")

    def __init__(self, dataset, options):
        super().__init__(dataset, options)
        self.lvis = dataset.format == "lvis"
        if options.detections:
            self.detections, self.detection_skips = read_detections(options.detections, dataset)
            self.detector = None
        elif options.detector:
            from ...detect import load_detector

            self.detections, self.detection_skips = None, {}
            self.detector = load_detector(options.detector, device=options.device)
        else:
            raise ValueError("instances needs boxes: --detections RESULTS.json (a COCO results file) or "
                             "--detector NAME_OR_FOLDER (Grounding DINO on the category names)")
        if self.lvis:
            self.headline = ("AP", "AP50", "AP75", "APr", "APc", "APf")

    def settings(self):
        o = self.options
        return {"detections": o.detections, "detector": o.detector, "box_threshold": o.box_threshold,
                "text_threshold": o.text_threshold}

    def _boxes(self, image: np.ndarray, item: EvalImage) -> List[dict]:
        if self.detector is None:
            return self.detections.get(item.id, [])
        names = {c["name"]: k for k, c in self.dataset.categories.items()}
        dets = self.detector.detect([image], " . ".join(names), box_threshold=self.options.box_threshold,
                                    text_threshold=self.options.text_threshold)[0]
        out = []
        for box, score, label in zip(dets.xyxy, dets.scores, dets.labels):
            if label in names:
                x0, y0, x1, y1 = (float(v) for v in box)
                out.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score), "category_id": names[label]})
        return out

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        h, w = image.shape[:2]
        boxes = self._boxes(image, item)
        dts: List[Detection] = []
        if boxes:
            segmenter.set_image(image)
            xyxy = np.stack([xywh_to_xyxy(b["bbox"], w, h) for b in boxes])
            masks, _, _ = segmenter.predict(boxes=xyxy, multimask=False)
            dts = [Detection(rle, float(b["score"]), int(b.get("category_id", 1)))
                   for rle, b in zip(encode(masks[:, 0]), boxes)]
        categories = sorted(self.dataset.categories)
        if self.lvis:
            dts = limit_per_image(dts, LVIS_MAX_DETS[-1])
            present = {o.category_id for o in item.instances}
            categories = sorted(present | set(item.neg_category_ids))
            dts = [d for d in dts if d.category in categories]
        max_det = (LVIS_MAX_DETS if self.lvis else COCO_MAX_DETS)[-1]
        matches = evaluate_image(dts, truths(item), categories, max_det, use_cats=True,
                                 not_exhaustive=item.not_exhaustive_category_ids if self.lvis else ())
        return {"matches": {f"{c}|{a}": m.to_json() for (c, a), m in matches.items() if m is not None},
                "predictions": [{"category_id": d.category, "segmentation": d.rle, "score": d.score} for d in dts]}

    def _per_image(self, records: Records) -> List[Dict[Tuple[int, str], Optional[Match]]]:
        out = []
        for _, record in records:
            parsed = {}
            for key, data in record["matches"].items():
                cat, area = key.split("|")
                parsed[int(cat), area] = Match.from_json(data)
            out.append(parsed)
        return out

    def summarize(self, records: Records, variant: str) -> Summary:
        per_image = self._per_image(records)
        categories = sorted(self.dataset.categories)
        max_dets = LVIS_MAX_DETS if self.lvis else COCO_MAX_DETS
        acc = accumulate(per_image, categories, max_dets, AREA_LABELS)
        if self.lvis:
            frequency = {k: c.get("frequency") for k, c in self.dataset.categories.items()}
            figures = lvis_summary(acc, categories, frequency, max_dets[-1])
        else:
            figures = coco_summary(acc, categories, max_dets)
        metrics = {k: Stat(v, None, None, len(records), "images") for k, v in figures.items()}
        o = self.options
        for name, iou in (("AP", None), ("AP50", 0.5)):
            # Each draw re-ranks every category's detections: at most AP_DRAWS of them.
            metrics[name] = resampled_ci(len(per_image), _ap_statistic(per_image, categories, max_dets[-1], iou),
                                         min(o.bootstrap, AP_DRAWS), o.seed, over="images")
        return Summary(metrics, extra={"detections_skipped": self.detection_skips,
                                       "evaluator": "LVISEval" if self.lvis else "COCOeval"})

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        from ..plots import bar_plot

        keys = [k for k in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")]
        values = {label: [s.metrics[k].to_json() if s.metrics[k].value > -1 else None for k in keys]
                  for label, s in summaries.items()}
        path = out_dir / "instances_ap.png"
        bar_plot(keys, values, path, "AP", f"Instance segmentation from detector boxes ({self.dataset.name})")
        return [path]


def _ap_statistic(per_image, categories, max_det, iou):
    """Mask AP (area 'all') of a resample of the images, for the bootstrap."""
    t = slice(None) if iou is None else [0 if iou == 0.5 else 5]

    def statistic(idx: np.ndarray) -> float:
        values = []
        for cat in categories:
            matches = [per_image[i].get((cat, "all")) for i in idx]
            values.append(precision_recall(matches, max_det)[0][t].ravel())
        value = mean_valid(np.concatenate(values)) if values else -1.0
        return float("nan") if value == -1 else value

    return statistic

"""`edges`: the SAM paper's zero-shot edge detection (grounded.eval.edges) scored with the BSDS-style
boundary benchmark (grounded.eval.boundaries): ODS, OIS, AP, R50 and the precision-recall curve.
The ground truth is BSDS500's annotators, or the contours of the instance masks for other data
sets. Each edge map is written to `edges/<model>/<image>.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..boundaries import THRESHOLDS, BoundaryCounts, benchmark, image_counts
from ..datasets import EvalImage
from ..edges import EdgeAccumulator, grid_points
from ..segmenters import Segmenter, prompt_chunks
from ..stats import Stat, resampled_ci
from .base import Records, Summary, Task, slug


class EdgesTask(Task):
    name = "edges"
    headline = ("ODS", "OIS", "AP", "R50")

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        h, w = image.shape[:2]
        points = grid_points(h, w)
        segmenter.set_image(image)
        acc = EdgeAccumulator(h, w)
        for part in prompt_chunks(len(points), h, w):
            logits, scores, _ = segmenter.predict(coords=points[part, None], labels=np.ones((len(points[part]), 1), np.int64),
                                                  multimask=True, return_logits=True)
            acc.add(logits.reshape(-1, h, w), scores.reshape(-1))
        edge_map = acc.edge_map()
        if self.options.out is not None:
            from PIL import Image

            folder = self.options.out / "edges" / slug(segmenter.label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(edge_map * 255).astype(np.uint8)).save(folder / (Path(item.name).stem + ".png"))
        counts = image_counts(edge_map, self.dataset.boundaries(item))
        return {"counts": counts.to_json()}

    def summarize(self, records: Records, variant: str) -> Summary:
        counts = [BoundaryCounts.from_json(r["counts"]) for _, r in records]
        scores = benchmark(counts)
        o = self.options

        def ods(idx):
            return benchmark([counts[i] for i in idx]).ods

        metrics = {"ODS": resampled_ci(len(counts), ods, o.bootstrap, o.seed, over="images"),
                   "OIS": Stat(scores.ois, None, None, len(counts), "images"),
                   "AP": Stat(scores.ap, None, None, len(counts), "images"),
                   "R50": Stat(scores.r50, None, None, len(counts), "images")}
        k = int(np.argmin(np.abs(THRESHOLDS - scores.ods_threshold)))
        curve = {"recall": scores.recall.tolist(), "precision": scores.precision.tolist(), "ods": scores.ods,
                 "ods_point": [float(scores.recall[k]), float(scores.precision[k])], "ods_threshold": scores.ods_threshold}
        return Summary(metrics, curves={"precision_recall": curve})

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        from ..plots import precision_recall_plot

        path = out_dir / "edges_precision_recall.png"
        precision_recall_plot({label: s.curves["precision_recall"] for label, s in summaries.items()}, path,
                              f"Zero-shot edges: boundary precision-recall ({self.dataset.name})")
        return [path]

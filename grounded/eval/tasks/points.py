"""`points`: the SAM paper's point-prompt protocols.

Single point: each object is prompted with one foreground point, the point farthest from its
boundary (the maximum of the distance transform) and, separately, a uniformly random point of the
object (seeded per object); SAM's three masks are scored by IoU with the object: the top-scoring
mask (by SAM's predicted IoU) and the best of the three (oracle).

Interactive: the first click is the centre point, answered with three masks of which the
top-scoring one is kept; each next click goes to the largest connected error region, at its most
interior pixel, positive in a false negative and negative in a false positive, and SAM predicts one
mask from all clicks so far plus the previous low-res logits as mask input. mIoU after each click
(up to `--clicks`, 20), and NoC@85 / NoC@90: clicks until the IoU first reaches 0.85 / 0.90 (the
maximum when it never does). An object predicted perfectly keeps its mask for the remaining clicks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..datasets import EvalImage
from ..masks import center_point, decode, mask_iou, next_click, random_point
from ..segmenters import Segmenter
from ..stats import mean_ci
from .base import Records, Summary, Task, rng_for


def noc(curve: np.ndarray, threshold: float) -> int:
    """Clicks until the IoU first reaches `threshold` (1-based), len(curve) if it never does."""
    hit = np.flatnonzero(np.asarray(curve) >= threshold)
    return int(hit[0]) + 1 if len(hit) else len(curve)


def interactive(segmenter: Segmenter, truths: np.ndarray, first_masks: np.ndarray, first_scores: np.ndarray,
                first_low_res: np.ndarray, first_points: np.ndarray, clicks: int) -> np.ndarray:
    """IoU after each click (N x clicks) of the interactive protocol, from the first click's outputs."""
    return click_until(segmenter, truths, first_masks, first_scores, first_low_res, first_points, clicks).curve


@dataclass
class Clicked:
    """What the interactive protocol ends with, per object: the IoU after each prompt (N x clicks),
    the final masks (N x H x W), their low-res logits and predicted IoU, and the points clicked."""

    curve: np.ndarray
    masks: np.ndarray
    low_res: np.ndarray
    scores: np.ndarray
    points: List[list]  # per object: [(x, y, label), ...] in click order


def click_until(segmenter: Segmenter, truths: np.ndarray, first_masks: np.ndarray, first_scores: np.ndarray,
                first_low_res: np.ndarray, first_points: Optional[np.ndarray], clicks: int,
                stop_iou: Optional[float] = None, boxes: Optional[np.ndarray] = None) -> Clicked:
    """The interactive protocol from the first prompt's outputs (its top-scoring mask is kept): each
    next click at the most interior pixel of the largest error region, SAM predicting one mask from
    all clicks (and `boxes`, when the first prompt was a box) with the previous low-res logits as mask
    input, up to `clicks` prompts. With `stop_iou` an object stops being clicked once its IoU reaches
    it (the simulated annotator of `grounded engine` accepts then); its curve keeps that value."""
    n = len(truths)
    rows = np.arange(n)
    best = first_scores.argmax(axis=1)
    prediction = first_masks[rows, best]
    logits = first_low_res[rows, best]
    scores = first_scores[rows, best].astype(np.float64)
    coords = [[tuple(p)] for p in first_points] if first_points is not None else [[] for _ in range(n)]
    labels = [[1] for _ in range(n)] if first_points is not None else [[] for _ in range(n)]
    curve = np.zeros((n, clicks))
    curve[:, 0] = mask_iou(prediction, truths)
    active = np.ones(n, bool) if stop_iou is None else curve[:, 0] < stop_iou
    for k in range(1, clicks):
        for i in np.flatnonzero(active):
            click = next_click(prediction[i], truths[i])
            if click is None:  # perfect: nothing left to correct
                active[i] = False
                continue
            coords[i].append(click[:2])
            labels[i].append(click[2])
        idx = np.flatnonzero(active)
        if len(idx):
            masks, predicted, low_res = segmenter.predict(
                coords=np.array([coords[i] for i in idx], np.float64), labels=np.array([labels[i] for i in idx]),
                boxes=None if boxes is None else boxes[idx], mask_input=logits[idx][:, None], multimask=False)
            prediction[idx] = masks[:, 0]
            logits[idx] = low_res[:, 0]
            scores[idx] = predicted[:, 0]
        curve[:, k] = mask_iou(prediction, truths)
        if stop_iou is not None:
            active &= curve[:, k] < stop_iou
    points = [[(float(x), float(y), int(lab)) for (x, y), lab in zip(c, lab_)] for c, lab_ in zip(coords, labels)]
    return Clicked(curve, prediction, logits, scores, points)


class PointsTask(Task):
    name = "points"
    headline = ("center_top", "center_oracle", "random_top", "random_oracle", "NoC@85", "NoC@90")

    def settings(self):
        return {"seed": self.options.seed, "clicks": self.options.clicks}

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        objects = item.prompts
        if not objects:
            return {"objects": []}
        truths = decode([o.rle for o in objects])
        centers = np.array([center_point(m) for m in truths])
        randoms = np.array([random_point(m, rng_for(self.options.seed, item, o.id)) for m, o in zip(truths, objects)])
        segmenter.set_image(image)
        ones = np.ones((len(objects), 1), np.int64)
        out = []
        m_c, s_c, low_c = segmenter.predict(coords=centers[:, None], labels=ones, multimask=True)
        m_r, s_r, _ = segmenter.predict(coords=randoms[:, None], labels=ones, multimask=True)
        curve = interactive(segmenter, truths, m_c, s_c, low_c, centers, self.options.clicks)
        for j, obj in enumerate(objects):
            out.append({
                "id": obj.id, "area": obj.area,
                "center": {"point": centers[j].tolist(), "ious": mask_iou(m_c[j], np.repeat(truths[j][None], len(m_c[j]), 0)).tolist(),
                           "scores": s_c[j].tolist()},
                "random": {"point": randoms[j].tolist(), "ious": mask_iou(m_r[j], np.repeat(truths[j][None], len(m_r[j]), 0)).tolist(),
                           "scores": s_r[j].tolist()},
                "clicks": curve[j].tolist(),
            })
        return {"objects": out}

    def summarize(self, records: Records, variant: str) -> Summary:
        objects = [o for _, r in records for o in r["objects"]]
        opts = self.options
        figures: Dict[str, List[float]] = {"center_top": [], "center_oracle": [], "random_top": [], "random_oracle": []}
        for o in objects:
            for which in ("center", "random"):
                ious = np.asarray(o[which]["ious"])
                figures[f"{which}_top"].append(ious[int(np.argmax(o[which]["scores"]))])
                figures[f"{which}_oracle"].append(ious.max())
        # (a data set with no object at all has no curve: its figures are NaN, as boxes' are)
        curves = np.array([o["clicks"] for o in objects]).reshape(len(objects), -1 if objects else opts.clicks)
        metrics = {k: mean_ci(v, opts.bootstrap, opts.seed) for k, v in figures.items()}
        metrics["NoC@85"] = mean_ci([noc(c, 0.85) for c in curves], opts.bootstrap, opts.seed)
        metrics["NoC@90"] = mean_ci([noc(c, 0.90) for c in curves], opts.bootstrap, opts.seed)
        per_click = [mean_ci(curves[:, k], opts.bootstrap, opts.seed) for k in range(curves.shape[1])]
        for k in (1, 3, 5, 10, 20):
            if k <= curves.shape[1]:
                metrics[f"mIoU@{k}"] = per_click[k - 1]
        return Summary(metrics, curves={"miou_per_click": [s.to_json() for s in per_click]})

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        from ..plots import curve_plot

        series = {label: s.curves["miou_per_click"] for label, s in summaries.items()}
        path = out_dir / "points_miou_per_click.png"
        curve_plot(series, path, xlabel="clicks", ylabel="mIoU", title=f"Interactive segmentation: mIoU per click ({self.dataset.name})",
                   x_start=1)
        return [path]

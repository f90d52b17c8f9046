"""COCO-style average precision and recall, written from the definitions COCOeval and LVISEval use,
so that they can be computed image by image (and resumed) and bootstrapped over images.

Per image and category, `match_image` sorts detections by score, matches each greedily to the
best-IoU ground truth still free at each IoU threshold 0.50:0.95 (a ground truth outside the area
range, or a crowd region, is matched only when nothing else is; crowd regions absorb any number of
detections), and marks as ignored the detections matched to ignored ground truth, and unmatched ones
outside the area range or of a category the image is not exhaustively annotated for (LVIS).
`accumulate` merges the images in score order and reads precision at 101 recall points, as COCOeval
does. The tests check every figure against pycocotools' COCOeval and the `lvis` package to 1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .masks import AREA_RANGES, iou_matrix

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREA_LABELS = ("all", "small", "medium", "large")


@dataclass
class Match:
    """One image, one category (or all, class-agnostic), one area range."""

    scores: np.ndarray  # D, highest first
    matched: np.ndarray  # T x D bool
    ignored: np.ndarray  # T x D bool
    n_gt: int  # ground truth that counts (not ignored)
    gt_rank: np.ndarray  # T x n_gt: rank of the detection matched to each counted ground truth, -1 if none

    def to_json(self) -> list:
        weights = 1 << np.arange(self.matched.shape[0])
        return [self.scores.tolist(), (self.matched.T * weights).sum(1).tolist(),
                (self.ignored.T * weights).sum(1).tolist(), self.n_gt, self.gt_rank.tolist()]

    @classmethod
    def empty(cls, n_thresholds: int = len(IOU_THRESHOLDS)) -> "Match":
        no = np.zeros((n_thresholds, 0), bool)
        return cls(np.zeros(0), no, no.copy(), 0, np.zeros((n_thresholds, 0), np.int64))

    @classmethod
    def from_json(cls, data: list, n_thresholds: int = len(IOU_THRESHOLDS)) -> "Match":
        scores, matched, ignored, n_gt, gt_rank = data
        bits = 1 << np.arange(n_thresholds)
        unpack = lambda v: (np.asarray(v, np.int64)[None, :] & bits[:, None]) > 0  # noqa: E731
        return cls(np.asarray(scores, np.float64), unpack(matched), unpack(ignored), int(n_gt),
                   np.asarray(gt_rank, np.int64).reshape(n_thresholds, -1))


def match_image(ious: np.ndarray, dt_area: np.ndarray, gt_area: np.ndarray, gt_crowd: np.ndarray,
                gt_ignore: np.ndarray, area_rng: Tuple[float, float], unmatched_ignored: bool = False,
                thresholds: np.ndarray = IOU_THRESHOLDS) -> Match:
    """Greedy matching of one image's detections (rows of `ious`, already sorted by score, highest
    first) to its ground truth (columns), for one area range; see the module docstring."""
    n_dt, n_gt = ious.shape
    ignore = np.asarray(gt_ignore, bool) | (gt_area < area_rng[0]) | (gt_area > area_rng[1])
    order = np.argsort(ignore, kind="mergesort")  # counted ground truth first, as COCOeval sorts it
    ious, ignore, crowd = ious[:, order], ignore[order], np.asarray(gt_crowd, bool)[order]
    n_thr = len(thresholds)
    matched = np.zeros((n_thr, n_dt), bool)
    ignored = np.zeros((n_thr, n_dt), bool)
    rank = -np.ones((n_thr, n_gt), np.int64)
    # A detection below the lowest threshold with every ground truth can match nothing.
    candidates = np.flatnonzero((ious >= min(thresholds.min(), 1 - 1e-10)).any(axis=1)) if n_gt else []
    for t, thr in enumerate(thresholds):
        taken = np.zeros(n_gt, bool)
        thr = min(thr, 1 - 1e-10)
        for d in candidates:
            ok = (~taken | crowd) & (ious[d] >= thr)
            g = _best(ious[d], ok & ~ignore)
            if g < 0:
                g = _best(ious[d], ok & ignore)
                if g < 0:
                    continue
            matched[t, d] = True
            ignored[t, d] = ignore[g]
            taken[g] = True
            rank[t, g] = d
    outside = (dt_area < area_rng[0]) | (dt_area > area_rng[1])
    if unmatched_ignored:
        outside = np.ones(n_dt, bool)
    ignored |= ~matched & outside[None, :]
    counted = ~ignore
    return Match(np.zeros(n_dt), matched, ignored, int(counted.sum()), rank[:, counted])


def _best(ious_row: np.ndarray, allowed: np.ndarray) -> int:
    """The allowed column of highest IoU, the last one on ties (COCOeval's `>=` update); -1 if none."""
    idx = np.flatnonzero(allowed)
    if not len(idx):
        return -1
    vals = ious_row[idx]
    return int(idx[len(vals) - 1 - int(np.argmax(vals[::-1]))])


@dataclass
class Detection:
    rle: dict
    score: float
    category: int


@dataclass
class Truth:
    rle: dict
    area: float
    category: int
    crowd: bool = False
    ignore: bool = False


def evaluate_image(dts: Sequence[Detection], gts: Sequence[Truth], categories: Sequence[int], max_det: int,
                   use_cats: bool = True, not_exhaustive: Sequence[int] = (),
                   area_labels: Sequence[str] = AREA_LABELS) -> Dict[Tuple[int, str], Optional[Match]]:
    """Matches of one image for every (category, area range); category -1 when class-agnostic. An entry
    is None where the image has neither detections nor ground truth of that category (COCOeval's rule)."""
    from .masks import rle_areas

    out: Dict[Tuple[int, str], Optional[Match]] = {}
    for cat in (categories if use_cats else [-1]):
        dt = [d for d in dts if not use_cats or d.category == cat]
        gt = [g for g in gts if not use_cats or g.category == cat]
        if use_cats is False:  # pooled in category order, as COCOeval pools them
            rank = {c: i for i, c in enumerate(categories)}
            dt = sorted(dt, key=lambda d: rank.get(d.category, len(rank)))
            gt = sorted(gt, key=lambda g: rank.get(g.category, len(rank)))
        if not dt and not gt:
            for label in area_labels:
                out[cat, label] = None
            continue
        order = np.argsort([-d.score for d in dt], kind="mergesort")[:max_det]
        dt = [dt[i] for i in order]
        ious = iou_matrix([d.rle for d in dt], [g.rle for g in gt], [g.crowd for g in gt])
        dt_area = rle_areas([d.rle for d in dt])
        gt_area = np.array([g.area for g in gt], np.float64)
        gt_crowd = np.array([g.crowd for g in gt], bool)
        gt_ignore = np.array([g.ignore or g.crowd for g in gt], bool)
        for label in area_labels:
            match = match_image(ious, dt_area, gt_area, gt_crowd, gt_ignore, AREA_RANGES[label],
                                unmatched_ignored=cat in not_exhaustive)
            match.scores = np.array([d.score for d in dt], np.float64)
            out[cat, label] = match
    return out


def precision_recall(matches: Sequence[Optional[Match]], max_det: int) -> Tuple[np.ndarray, np.ndarray]:
    """COCOeval's accumulate for one category and area range over images (in image order): precision
    T x 101 at the recall points and recall T; both -1 when no ground truth counts."""
    present = [m for m in matches if m is not None]
    n_thr = len(IOU_THRESHOLDS)
    n_gt = sum(m.n_gt for m in present)
    if not present or n_gt == 0:
        return -np.ones((n_thr, len(RECALL_POINTS))), -np.ones(n_thr)
    scores = np.concatenate([m.scores[:max_det] for m in present])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([m.matched[:, :max_det] for m in present], axis=1)[:, order]
    ignored = np.concatenate([m.ignored[:, :max_det] for m in present], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    n = tp.shape[1]
    if n == 0:
        return np.zeros((n_thr, len(RECALL_POINTS))), np.zeros(n_thr)
    rc = tp / n_gt
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # best precision at this recall or beyond
    precision = np.zeros((n_thr, len(RECALL_POINTS)))
    for t in range(n_thr):
        idx = np.searchsorted(rc[t], RECALL_POINTS, side="left")
        ok = idx < n
        precision[t, ok] = pr[t, idx[ok]]
    return precision, rc[:, -1]


def mean_valid(values) -> float:
    """COCOeval's summary: the mean of the entries that are not -1 (-1 when none are)."""
    v = np.asarray(values, np.float64)
    v = v[v > -1]
    return float(v.mean()) if len(v) else -1.0


@dataclass
class Accumulated:
    precision: Dict[Tuple[int, str, int], np.ndarray]  # (category, area, max_det) -> T x 101
    recall: Dict[Tuple[int, str, int], np.ndarray]  # (category, area, max_det) -> T


def accumulate(per_image: Sequence[Dict[Tuple[int, str], Optional[Match]]], categories: Sequence[int],
               max_dets: Sequence[int], area_labels: Sequence[str] = AREA_LABELS) -> Accumulated:
    precision, recall = {}, {}
    for cat in categories:
        for label in area_labels:
            matches = [image.get((cat, label)) for image in per_image]
            for m in max_dets:
                precision[cat, label, m], recall[cat, label, m] = precision_recall(matches, m)
    return Accumulated(precision, recall)


def average_precision(acc: Accumulated, categories: Sequence[int], area: str, max_det: int,
                      iou: Optional[float] = None) -> float:
    t = slice(None) if iou is None else [int(np.argmin(np.abs(IOU_THRESHOLDS - iou)))]
    return mean_valid(np.concatenate([acc.precision[c, area, max_det][t].ravel() for c in categories])
                      if categories else [])


def average_recall(acc: Accumulated, categories: Sequence[int], area: str, max_det: int) -> float:
    return mean_valid(np.concatenate([acc.recall[c, area, max_det] for c in categories]) if categories else [])


def coco_summary(acc: Accumulated, categories: Sequence[int], max_dets: Sequence[int] = (1, 10, 100)) -> Dict[str, float]:
    """COCOeval's twelve segm figures (stats[0..11]) by name."""
    big = max_dets[-1]
    out = {"AP": average_precision(acc, categories, "all", big),
           "AP50": average_precision(acc, categories, "all", big, 0.5),
           "AP75": average_precision(acc, categories, "all", big, 0.75)}
    for label in ("small", "medium", "large"):
        out[f"AP_{label}"] = average_precision(acc, categories, label, big)
    for m in max_dets:
        out[f"AR@{m}"] = average_recall(acc, categories, "all", m)
    for label in ("small", "medium", "large"):
        out[f"AR_{label}@{big}"] = average_recall(acc, categories, label, big)
    return out


def lvis_summary(acc: Accumulated, categories: Sequence[int], frequency: Dict[int, str], max_det: int = 300) -> Dict[str, float]:
    """LVISEval's figures by name: AP, AP50, AP75, APs/m/l, APr/c/f, AR@300 and ARs/m/l@300."""
    out = {"AP": average_precision(acc, categories, "all", max_det),
           "AP50": average_precision(acc, categories, "all", max_det, 0.5),
           "AP75": average_precision(acc, categories, "all", max_det, 0.75)}
    for label in ("small", "medium", "large"):
        out[f"AP_{label}"] = average_precision(acc, categories, label, max_det)
    for group in ("r", "c", "f"):
        out[f"AP{group}"] = average_precision(acc, [c for c in categories if frequency.get(c) == group], "all", max_det)
    out[f"AR@{max_det}"] = average_recall(acc, categories, "all", max_det)
    for label in ("small", "medium", "large"):
        out[f"AR_{label}@{max_det}"] = average_recall(acc, categories, label, max_det)
    return out


def limit_per_image(dts: List[Detection], max_det: int) -> List[Detection]:
    """LVIS's cap on detections per image across categories: the `max_det` best scores (stable)."""
    if len(dts) <= max_det:
        return list(dts)
    return sorted(dts, key=lambda d: d.score, reverse=True)[:max_det]

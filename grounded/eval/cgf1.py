"""SA-Co's classification-gated F1 (the SAM 3 paper): how well text-prompted masks find every instance
of a phrase, and whether they stay empty when the phrase is absent.

A pair is (image, phrase). Predictions count when their score is at least the threshold (0.5 by
default, SA-Co's). Per pair and IoU threshold (0.50:0.95) the predictions are matched one-to-one
to the ground truth by the assignment of largest total mask IoU (scipy's linear_sum_assignment, the
rule of SA-Co's evaluator); a match at or above the threshold is a true positive. Image level: a pair
is an IL true positive when it has ground truth and predictions, a false positive when it has
predictions only, a false negative when it has ground truth only, a true negative when it has neither.

- pmF1 (positive micro F1): F1 of the true positives summed over pairs, where the false positives
  are counted on pairs with ground truth only.
- IL_MCC: the Matthews correlation of the image-level counts.
- cgF1 = pmF1 x IL_MCC, each averaged over the IoU thresholds as SA-Co reports them.

With several annotations per pair (SA-Co/Gold has three), each pair is scored against the one that
suits the predictions best (largest mean local F1; an empty annotation with no predictions counts as
perfect), as SA-Co's oracle does. Pairs not marked instance-exhaustive are left out. The small
constants (1e-4 in F1s, 1e-6 in the image-level figures) are SA-Co's, so the figures agree with its
evaluator to float precision; the tests check that against `sam3/eval/cgf1_eval.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .coco_metrics import IOU_THRESHOLDS
from .masks import iou_matrix

SCORE_THRESHOLD = 0.5


@dataclass
class PairScore:
    """One pair against one annotation: image-level outcome and, per IoU threshold, TP/FP/FN."""

    il: str  # "TP", "FP", "FN" or "TN"
    tp: Optional[np.ndarray] = None  # None for a true negative
    fp: Optional[np.ndarray] = None
    fn: Optional[np.ndarray] = None
    local_f1: Optional[np.ndarray] = None
    n_dt: int = 0

    def to_json(self) -> dict:
        out = {"il": self.il, "n_dt": self.n_dt}
        if self.tp is not None:
            out.update(tp=self.tp.tolist(), fp=self.fp.tolist(), fn=self.fn.tolist(), local_f1=self.local_f1.tolist())
        return out

    @classmethod
    def from_json(cls, data: dict) -> "PairScore":
        arrays = {k: np.asarray(data[k], np.float64 if k == "local_f1" else np.int64)
                  for k in ("tp", "fp", "fn", "local_f1") if k in data}
        return cls(data["il"], n_dt=int(data["n_dt"]), **arrays)


def score_pair(predictions: Sequence[dict], truths: Sequence[dict]) -> PairScore:
    """predictions: RLEs already above the score threshold; truths: the annotation's RLEs (no crowd)."""
    n_dt, n_gt = len(predictions), len(truths)
    n_thr = len(IOU_THRESHOLDS)
    if n_dt == 0 and n_gt == 0:
        return PairScore("TN")
    if n_dt == 0:
        zeros = np.zeros(n_thr, np.int64)
        return PairScore("FN", zeros, zeros.copy(), np.full(n_thr, n_gt, np.int64), np.zeros(n_thr), 0)
    from scipy.optimize import linear_sum_assignment

    ious = iou_matrix(predictions, truths)
    rows, cols = linear_sum_assignment(-ious) if n_gt else (np.zeros(0, int), np.zeros(0, int))
    matched = ious[rows, cols]
    tp = np.array([(matched >= t).sum() for t in IOU_THRESHOLDS], np.int64)
    fp, fn = n_dt - tp, n_gt - tp
    precision = tp / (tp + fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    f1 = 2 * precision * recall / (precision + recall + 1e-4)
    return PairScore("TP" if n_gt else "FP", tp, fp, fn, f1, n_dt)


def oracle(scores: Sequence[PairScore]) -> PairScore:
    """The annotation that suits the predictions best (SA-Co's rule; see the module docstring)."""
    best = scores[0]
    for current in scores[1:]:
        if best.local_f1 is not None and current.local_f1 is not None:
            if current.local_f1.mean() > best.local_f1.mean():
                best = current
        elif current.local_f1 is None:
            best = current
    return best


def pair_iou(predictions: Sequence[dict], truths: Sequence[dict]) -> float:
    """IoU of the union of the predictions with the union of the ground truth (a phrase's semantic IoU)."""
    from pycocotools import mask as mask_utils

    pred = mask_utils.merge(list(predictions), intersect=False) if predictions else None
    truth = mask_utils.merge(list(truths), intersect=False) if truths else None
    if pred is None and truth is None:
        return 1.0
    if pred is None or truth is None:
        return 0.0
    return float(iou_matrix([pred], [truth])[0, 0])


def cgf1_arrays(pairs: Sequence[PairScore]) -> Dict[str, np.ndarray]:
    """Per-pair counts as arrays (pairs x thresholds), so that figures of any subset (a bootstrap
    draw) are sums over rows."""
    n_thr = len(IOU_THRESHOLDS)
    zeros = np.zeros(n_thr)
    rows = {k: [] for k in ("tp", "fp", "fn", "pm_fp", "local", "has_local", "il")}
    for pair in pairs:
        counted = pair.tp is not None
        positive = pair.il in ("TP", "FN")  # pairs with ground truth: SA-Co's "positive" pairs
        rows["tp"].append(pair.tp if counted else zeros)
        rows["fp"].append(pair.fp if counted else zeros)
        rows["fn"].append(pair.fn if counted else zeros)
        rows["pm_fp"].append(pair.fp if positive else zeros)
        rows["local"].append(pair.local_f1 if positive else zeros)
        rows["has_local"].append(positive and pair.n_dt > 0)
        rows["il"].append(["TP", "FP", "FN", "TN"].index(pair.il))
    out = {k: np.asarray(v, np.float64).reshape(len(pairs), n_thr) for k, v in rows.items() if k not in ("has_local", "il")}
    out["has_local"] = np.asarray(rows["has_local"], bool)
    out["il"] = np.asarray(rows["il"], np.int64)
    return out


def cgf1_from_arrays(arrays: Dict[str, np.ndarray], idx: np.ndarray) -> Dict[str, float]:
    """cgF1, IL_MCC, pmF1 (means over IoU thresholds, and at 0.5 and 0.75) and the other figures of
    SA-Co's evaluator, over the pairs `idx` (repeats allowed)."""
    tp, fp, fn, pm_fp, local = (arrays[k][idx].sum(0) for k in ("tp", "fp", "fn", "pm_fp", "local"))
    n_local = int(arrays["has_local"][idx].sum())
    t_p, f_p, f_n, t_n = (float(c) for c in np.bincount(arrays["il"][idx], minlength=4))
    precision = tp / (tp + fp + 1e-4)
    pm_precision = tp / (tp + pm_fp + 1e-4)
    recall = tp / (tp + fn + 1e-4)
    pm_f1 = 2 * pm_precision * recall / (pm_precision + recall + 1e-4)
    f1 = 2 * precision * recall / (precision + recall + 1e-4)
    mcc = (t_p * t_n - f_p * f_n) / (((t_p + f_p) * (t_p + f_n) * (t_n + f_p) * (t_n + f_n)) ** 0.5 + 1e-6)
    il_recall = t_p / (t_p + f_n + 1e-6)
    il_precision = t_p / (t_p + f_p + 1e-6)
    cg = pm_f1 * mcc
    return {"cgF1": float(cg.mean()), "IL_MCC": float(mcc), "pmF1": float(pm_f1.mean()),
            "cgF1@0.5": float(cg[0]), "cgF1@0.75": float(cg[5]), "pmF1@0.5": float(pm_f1[0]),
            "pmF1@0.75": float(pm_f1[5]), "F1": float(f1.mean()), "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "positive_macro_F1": float((local / n_local).mean()) if n_local else float("nan"),
            "IL_precision": il_precision, "IL_recall": il_recall,
            "IL_F1": 2 * il_precision * il_recall / (il_precision + il_recall + 1e-6),
            "IL_FPR": f_p / (f_p + t_n + 1e-6)}


def cgf1_figures(pairs: Sequence[PairScore]) -> Dict[str, float]:
    """The figures over all pairs (see cgf1_from_arrays)."""
    return cgf1_from_arrays(cgf1_arrays(pairs), np.arange(len(pairs)))


def score_pairs(predictions: Sequence[Sequence[dict]], annotations: Sequence[Sequence[Sequence[dict]]]) -> List[PairScore]:
    """Each pair's predictions (RLEs above the threshold) against its annotations (one list of RLEs
    per annotator), the best annotation kept."""
    return [oracle([score_pair(p, a) for a in annots]) for p, annots in zip(predictions, annotations)]

"""The point protocols on hand-made cases with known answers: the clicks the interactive protocol
places, the logits it feeds back, NoC@85/90, and the single-point figures."""

import numpy as np
import pytest

from grounded.eval.datasets import Dataset, EvalImage, instances_from_labels
from grounded.eval.masks import center_point, interior_point, next_click, random_point
from grounded.eval.segmenters import Segmenter
from grounded.eval.tasks.base import Options
from grounded.eval.tasks.points import PointsTask, noc


class ScriptedSegmenter(Segmenter):
    """A model whose k-th answer for an object is fixed in advance (rows of the object covered from
    the top), recording every call. Object i is told apart by its first click's position."""

    label, kind, weights = "scripted", "grounded", "-"

    def __init__(self, truths, covered_rows, overshoot=None):
        self.truths, self.covered = truths, covered_rows
        self.overshoot = overshoot or {}
        self.calls = []

    def set_image(self, image):
        self.shape = image.shape[:2]

    def _which(self, xy):
        return next(i for i, t in enumerate(self.truths) if t[int(xy[1]), int(xy[0])])

    def _mask(self, i, k):
        truth = self.truths[i]
        rows = np.flatnonzero(truth.any(axis=1))
        mask = truth & (np.arange(truth.shape[0]) < rows[0] + self.covered[i][min(k, len(self.covered[i]) - 1)])[:, None]
        if i in self.overshoot and k < self.overshoot[i]:
            mask = mask | np.roll(truth, 3, axis=1)  # spills 3 px to the right: a false positive
        return mask

    def predict(self, coords=None, labels=None, boxes=None, mask_input=None, multimask=True, return_logits=False):
        self.calls.append({"coords": coords.copy(), "labels": labels.copy(),
                           "mask_input": None if mask_input is None else mask_input.copy(), "multimask": multimask})
        n, k = coords.shape[:2]
        outputs = 3 if multimask else 1
        masks = np.zeros((n, outputs, *self.shape), bool)
        scores = np.zeros((n, outputs))
        low = np.zeros((n, outputs, 256, 256), np.float32)
        for j in range(n):
            i = self._which(coords[j, 0])
            masks[j, 0] = self._mask(i, k - 1)
            scores[j] = [0.9, 0.5, 0.1][:outputs]
            low[j, 0] = 100 * i + k  # identifies the answer it came from
            if multimask:
                masks[j, 1] = self.truths[i]  # the oracle's choice, never the top score
        return masks, scores, low


def rectangle(shape, y0, y1, x0, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_noc_counts_clicks_until_the_threshold():
    assert noc([0.25, 0.5, 0.875, 0.9375, 1.0], 0.85) == 3
    assert noc([0.25, 0.5, 0.875, 0.9375, 1.0], 0.90) == 4
    assert noc([0.86], 0.85) == 1 and noc([0.5, 0.6, 0.7], 0.85) == 3  # never: the maximum


def test_interactive_protocol_clicks_noc_and_feedback():
    shape = (40, 64)
    a = rectangle(shape, 8, 24, 8, 40)  # 16 rows
    b = rectangle(shape, 28, 38, 44, 60)  # 10 rows, over-segmented for its first two answers
    labels = np.zeros(shape, np.int32)
    labels[a], labels[b] = 1, 2
    seg = ScriptedSegmenter([a, b], covered_rows=[[4, 8, 14, 15, 16], [10]], overshoot={1: 2})
    item = EvalImage(1, "scene.png", None, *shape, instances=instances_from_labels(labels))
    dataset = Dataset("labels", "hand-made", [item], {1: {"name": "object"}})
    task = PointsTask(dataset, Options(clicks=6, bootstrap=0))
    record = task.run_image(seg, np.zeros((*shape, 3), np.uint8), item)
    curve_a, curve_b = (np.array(o["clicks"]) for o in record["objects"])
    # Object a: its top 4, 8, 14, 15, 16 rows of 16: IoU 0.25, 0.5, 0.875, 0.9375, 1, then kept.
    np.testing.assert_allclose(curve_a, [0.25, 0.5, 0.875, 0.9375, 1.0, 1.0])
    # Object b: 160 px, spilling 3 px right (30 more pixels) for two answers, then exact.
    np.testing.assert_allclose(curve_b, [160 / 190, 160 / 190, 1, 1, 1, 1])
    # 160/190 = 0.842: below 0.85, so b needs its third click for both thresholds.
    assert (noc(curve_a, 0.85), noc(curve_a, 0.90), noc(curve_b, 0.85), noc(curve_b, 0.90)) == (3, 4, 3, 3)
    summary = task.summarize([(item, record)], "scripted")
    assert summary.metrics["NoC@85"].value == 3.0 and summary.metrics["NoC@90"].value == 3.5
    assert summary.metrics["mIoU@1"].value == pytest.approx((0.25 + 160 / 190) / 2)
    # The single-point figures: the top-scoring mask (first) and the oracle (the object itself).
    assert summary.metrics["center_oracle"].value == 1.0
    assert summary.metrics["center_top"].value == pytest.approx((0.25 + 160 / 190) / 2)

    first, second, third = seg.calls[2], seg.calls[3], seg.calls[4]  # calls 0, 1: centre and random points
    assert seg.calls[0]["multimask"] and not second["multimask"]
    # Click 2 of object a: the uncovered rows 12..23 (x 8..39) are the largest error; their most
    # interior pixel (first in row-major order on ties) is at row 17, column 23.
    assert tuple(first["coords"][0, 1]) == (23.0, 17.0) and first["labels"][0, 1] == 1
    # Click 2 of object b: the spill, columns 60..62 of rows 28..37, a false positive: label 0.
    assert first["labels"][1, 1] == 0 and 60 <= first["coords"][1, 1, 0] <= 62
    # The previous answer's low-res logits come back as the mask input.
    assert (first["mask_input"][0, 0] == 1).all() and (first["mask_input"][1, 0] == 101).all()
    assert (second["mask_input"][0, 0] == 2).all()
    assert third["coords"].shape[0] == 1  # b is perfect after its third answer: only a is still clicked
    assert len(seg.calls) == 2 + 4  # a stops once perfect (after 5 answers)


def test_click_points():
    mask = rectangle((20, 30), 5, 15, 10, 28)
    assert center_point(mask) == (14.0, 9.0)
    assert interior_point(mask) == (18.0, 9.0)  # the middle of the deepest pixels
    border = rectangle((20, 30), 0, 10, 0, 30)  # touches the image border: counts as boundary
    assert interior_point(border)[1] in (4.0, 5.0)
    rng = np.random.default_rng(0)
    x, y = random_point(mask, rng)
    assert mask[int(y), int(x)]
    truth = rectangle((20, 30), 5, 15, 5, 25)
    assert next_click(truth, truth) is None
    pred = rectangle((20, 30), 5, 15, 5, 15)
    assert next_click(pred, truth) == (19.0, 9.0, 1)
    assert next_click(truth | rectangle((20, 30), 0, 3, 0, 30), truth)[2] == 0


def test_random_points_depend_on_seed_image_and_object_only():
    from grounded.eval.tasks.base import rng_for

    item = EvalImage(1, "a.png", None)
    assert rng_for(0, item, 3).integers(1 << 30) == rng_for(0, item, 3).integers(1 << 30)
    assert rng_for(0, item, 3).integers(1 << 30) != rng_for(1, item, 3).integers(1 << 30)
    assert rng_for(0, item, 3).integers(1 << 30) != rng_for(0, item, 4).integers(1 << 30)

"""The boundary benchmark on hand-made maps with known answers, its matching against
scipy.optimize.linear_sum_assignment, thinning, edge NMS and the SAM edge recipe."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from grounded.eval.boundaries import BoundaryCounts, benchmark, image_counts, match_pixels, thin
from grounded.eval.edges import EdgeAccumulator, edge_nms, grid_points
from grounded.eval.masks import seg_to_boundaries


def square_boundaries(size=200, lo=50, hi=150):
    """The thin (8-connected, one pixel) outline of a square, as human boundary maps are."""
    seg = np.ones((size, size), np.int32)
    seg[lo:hi, lo:hi] = 2
    return thin(seg_to_boundaries(seg))


def shift(mask, dy, dx):
    return np.roll(np.roll(mask, dy, axis=0), dx, axis=1)


def scores_of(edge_map, truths):
    return benchmark([image_counts(edge_map.astype(float), truths)])


def test_a_perfect_map_scores_one():
    truth = square_boundaries()
    s = scores_of(truth, [truth])
    assert (s.ods, s.ois, s.ap, s.r50) == (pytest.approx(1), pytest.approx(1), pytest.approx(1), pytest.approx(1))


def test_a_map_shifted_within_the_tolerance_still_scores_one_and_beyond_it_zero():
    truth = np.zeros((200, 200), bool)  # tolerance 0.0075 * 283 = 2.1 px
    truth[100, 20:180] = True
    truth[30:170, 60] = True
    within = scores_of(shift(truth, 2, 0), [truth])
    assert within.ods == pytest.approx(1) and within.ap == pytest.approx(1) and within.r50 == pytest.approx(1)
    assert scores_of(shift(truth, 1, 1), [truth]).ods == pytest.approx(1)  # sqrt(2) px
    # 3 px along both axes: the lines cross their shifted copies only where they intersect each other.
    beyond = scores_of(shift(truth, 3, 3), [truth])
    assert beyond.ods < 0.05 and beyond.ap < 0.05 and beyond.r50 < 0.05  # 8 of 300 pixels, at the crossing
    far = truth.copy()
    far[:] = False
    far[185, 20:180] = True  # clear of both lines by more than the tolerance
    assert scores_of(far, [truth]).ods == 0 and scores_of(far, [truth]).ap == 0


def test_half_the_boundary_found_gives_the_hand_computed_recall():
    truth = square_boundaries()
    half = truth.copy()
    half[:, 100:] = False  # the left half of the square's outline
    s = scores_of(half, [truth])
    recall = half.sum() / truth.sum()
    assert s.recall[0] == pytest.approx(recall) and s.precision[0] == pytest.approx(1)
    assert s.ods == pytest.approx(2 * recall / (1 + recall))
    # Two images: the perfect one and the half one. ODS from the summed counts; OIS the same here
    # (a binary map scores the same at every threshold).
    both = benchmark([image_counts(truth.astype(float), [truth]), image_counts(half.astype(float), [truth])])
    r = (truth.sum() + half.sum()) / (2 * truth.sum())
    assert both.ods == pytest.approx(2 * r / (1 + r)) and both.ois == pytest.approx(both.ods)


def test_counts_over_several_annotators():
    truth = square_boundaries()
    partial = truth.copy()
    partial[:100] = False  # the second annotator drew only the lower half
    counts = image_counts(truth.astype(float), [truth, partial], thresholds=np.array([0.5]))
    assert counts.matched_truth[0] == truth.sum() + partial.sum()
    assert counts.total_truth[0] == truth.sum() + partial.sum()
    assert counts.matched_edges[0] == counts.total_edges[0] == truth.sum()


def test_soft_map_precision_recall_curve_and_thresholds():
    truth = square_boundaries()
    rng = np.random.default_rng(0)
    noise = (rng.random(truth.shape) < 0.01) & ~ndimage.binary_dilation(truth, iterations=3)
    edge_map = np.where(truth, 0.8, 0.0) + np.where(noise, 0.3, 0.0)
    s = scores_of(edge_map, [truth])
    # Below 0.3 the noise counts; between 0.3 and 0.8 only the square: recall 1, precision 1.
    assert s.precision[10] < 0.6 and s.precision[50] == pytest.approx(1) and s.recall[50] == pytest.approx(1)
    assert s.recall[-1] == 0 and s.ods == pytest.approx(1) and 0.3 <= s.ods_threshold <= 0.8
    # The best precision at every recall is 1 (thresholds 0.3-0.8); above 0.8 no edges remain.
    assert s.ap == pytest.approx(1) and s.r50 == pytest.approx(1)


@pytest.mark.parametrize("seed", range(6))
def test_matching_is_as_large_as_linear_sum_assignment_finds(seed):
    rng = np.random.default_rng(seed)
    h, w = 14, 17
    edges = rng.random((h, w)) < 0.18
    truth = rng.random((h, w)) < 0.18
    radius = [1.0, 1.5, 2.2][seed % 3]
    matched_e, matched_t = match_pixels(edges, truth, radius)
    ey, ex = np.nonzero(edges)
    ty, tx = np.nonzero(truth)
    dist = np.hypot(ey[:, None] - ty[None], ex[:, None] - tx[None])
    cost = np.where(dist <= radius, 0.0, 1.0)
    rows, cols = linear_sum_assignment(cost)
    optimum = int((cost[rows, cols] == 0).sum())
    assert matched_e.sum() == matched_t.sum() == optimum > 0
    # Every pair the matching made is within the radius, one-to-one.
    assert not (matched_e & ~edges).any() and not (matched_t & ~truth).any()


def test_thinning_gives_one_pixel_wide_connected_curves():
    bar = np.zeros((30, 60), bool)
    bar[10:17, 5:55] = True
    thinned = thin(bar)
    columns = thinned[:, 12:48].sum(axis=0)
    assert (columns == 1).all()
    assert ndimage.label(thinned, np.ones((3, 3)))[1] == 1
    line = np.eye(20, dtype=bool)
    assert (thin(line) == line).all()  # already thin: unchanged
    ring = square_boundaries(40, 10, 30)
    assert (thin(ring) == ring).sum() > 0.9 * ring.size
    blobs = ndimage.binary_dilation(np.random.default_rng(1).random((50, 50)) < 0.02, iterations=2)
    assert ndimage.label(thin(blobs), np.ones((3, 3)))[1] == ndimage.label(blobs, np.ones((3, 3)))[1]


def test_edge_nms_keeps_the_ridge_of_a_blurred_edge():
    ys, xs = np.mgrid[0:40, 0:60]
    ridge = np.exp(-((xs - 30.0) ** 2) / 8.0)  # a soft vertical edge 30 px from the left
    out = edge_nms(ridge)
    rows = out[8:32]
    assert (rows.argmax(axis=1) == 30).all()
    assert ((rows > 0.05).sum(axis=1) == 1).all()  # one pixel wide
    tilted = np.exp(-((xs - 0.5 * ys - 20.0) ** 2) / 8.0)
    kept = edge_nms(tilted)[8:32] > 0.05
    assert (kept.sum(axis=1) <= 2).all() and kept.any(axis=1).all()
    assert edge_nms(ridge)[:, 0].max() == 0  # faded at the border


def test_sam_edge_recipe_on_hand_made_logits():
    h, w = 160, 200  # tolerance 1.9 px
    square = np.zeros((h, w), bool)
    square[40:110, 50:150] = True
    # Logits that rise across the contour, a little off-centre (a real model's never sit exactly
    # symmetric about it): the Sobel response peaks on one side, one line after edge NMS.
    signed = ndimage.distance_transform_edt(square) - ndimage.distance_transform_edt(~square)
    logits = 3.0 * (signed + 0.3)
    acc = EdgeAccumulator(h, w)
    acc.add(np.stack([logits, logits + 0.1, np.full((h, w), -8.0)]), np.array([0.9, 0.8, 0.5]))
    assert len(acc.boxes) == 3
    edges = acc.edge_map()
    assert edges.max() == pytest.approx(1.0)
    truth = thin(seg_to_boundaries(square.astype(int)))
    s = benchmark([image_counts(edges, [truth])])
    assert s.ods > 0.9
    raw = acc.edge_map(nms=False)
    band = ndimage.binary_dilation(logits > 0) & ~ndimage.binary_erosion(logits > 0)
    assert (raw[~band] == 0).all() and (raw[band] > 0).mean() > 0.9


def test_grid_points_are_cell_centres():
    pts = grid_points(32, 64, 4)
    assert pts.shape == (16, 2)
    assert pts[0].tolist() == [8.0, 4.0] and pts[-1].tolist() == [56.0, 28.0]


def test_boundary_counts_round_trip():
    c = BoundaryCounts(np.arange(3), np.arange(3) + 1, np.arange(3), np.arange(3) + 2)
    back = BoundaryCounts.from_json(c.to_json())
    assert all((getattr(back, f) == getattr(c, f)).all() for f in ("matched_truth", "total_truth", "matched_edges", "total_edges"))

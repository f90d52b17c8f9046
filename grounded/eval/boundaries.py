"""A BSDS-style boundary benchmark: ODS, OIS, AP and R50 of soft edge maps against one or more
human boundary maps per image.

For each of 99 thresholds (1/100 .. 99/100) the edge map is thresholded and thinned to one pixel,
then matched one-to-one to each human boundary map: an edge pixel and a boundary pixel may pair when
they lie within `max_dist` x the image diagonal (BSDS's 0.0075). The matching is a maximum bipartite
matching (Hopcroft-Karp, scipy.sparse.csgraph), i.e. as many pairs as the tolerance allows; BSDS's
correspondPixels approximates the same optimum with a min-cost assignment. Per image and threshold
the counts are those of BSDS: recall counts the boundary pixels matched, summed over the human maps;
precision counts the edge pixels matched to any of them.

- ODS: the best F over thresholds of the counts summed over the data set, interpolating linearly
  between neighbouring thresholds (100 steps), as the BSDS and edges toolboxes do.
- OIS: each image at its own best threshold, counts summed, then F.
- AP: precision interpolated linearly along the curve at recall 0, 0.01, .., 1 and averaged (0 past
  the curve's largest recall), the curve extended from its lowest recall to recall 0 at that point's
  precision, and thresholds that leave no edge pixel left out (so a perfect map scores 1; the edges
  toolbox leaves the extension out and counts empty maps as precision 0).
- R50: the recall where the curve crosses precision 0.5 (its largest recall if precision never falls
  to 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

THRESHOLDS = np.linspace(1 / 100, 1 - 1 / 100, 99)
MAX_DIST = 0.0075


# ---- thinning -----------------------------------------------------------------------------------

# Neighbour bits: E=1, NE=2, N=4, NW=8, W=16, SW=32, S=64, SE=128 (counter-clockwise from east).
_NEIGHBOUR_WEIGHTS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]])


def _thinning_tables() -> Tuple[np.ndarray, np.ndarray]:
    """Deletion tables of the two sub-iterations of Lam, Lee and Suen's parallel thinning (1992,
    conditions G1, G2 and G3 / G3'), the algorithm of MATLAB's bwmorph(.., 'thin', Inf)."""
    first, second = np.zeros(256, bool), np.zeros(256, bool)
    for code in range(256):
        x = [(code >> i) & 1 for i in range(8)]  # x[0] = x1 (east) .. x[7] = x8 (south-east)
        crossings = sum(1 for i in (0, 2, 4, 6) if not x[i] and (x[i + 1] or x[(i + 2) % 8]))
        n1 = sum(1 for k in (1, 3, 5, 7) if x[k - 1] or x[k])
        n2 = sum(1 for k in (1, 3, 5, 7) if x[k] or x[(k + 1) % 8])
        keep_shape = crossings == 1 and 2 <= min(n1, n2) <= 3
        first[code] = keep_shape and not ((x[1] or x[2] or not x[7]) and x[0])
        second[code] = keep_shape and not ((x[5] or x[6] or not x[3]) and x[4])
    return first, second


_TABLES = _thinning_tables()


def thin(mask: np.ndarray) -> np.ndarray:
    """Thin a binary map to one-pixel-wide, 8-connected curves (repeated until nothing changes)."""
    from scipy import ndimage

    skeleton = np.asarray(mask, bool).copy()
    while True:
        before = int(skeleton.sum())
        for table in _TABLES:
            codes = ndimage.correlate(skeleton.astype(np.uint8), _NEIGHBOUR_WEIGHTS, mode="constant")
            skeleton[table[codes] & skeleton] = False
        if int(skeleton.sum()) == before:
            return skeleton


# ---- one-to-one matching within a distance ------------------------------------------------------

def match_pixels(edges: np.ndarray, truth: np.ndarray, max_dist: float) -> Tuple[np.ndarray, np.ndarray]:
    """The largest one-to-one matching of edge pixels to boundary pixels at most `max_dist` pixels apart.
    Returns (matched edge pixels, matched boundary pixels) as bool maps."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    ey, ex = np.nonzero(edges)
    ty, tx = np.nonzero(truth)
    matched_e, matched_t = np.zeros(edges.shape, bool), np.zeros(truth.shape, bool)
    if not len(ey) or not len(ty):
        return matched_e, matched_t
    index = -np.ones(truth.shape, np.int64)
    index[ty, tx] = np.arange(len(ty))
    r = int(np.floor(max_dist))
    rows, cols = [], []
    h, w = truth.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > max_dist * max_dist:
                continue
            y, x = ey + dy, ex + dx
            inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
            hit = np.zeros(len(ey), bool)
            hit[inside] = index[y[inside], x[inside]] >= 0
            rows.append(np.flatnonzero(hit))
            cols.append(index[y[hit], x[hit]])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = csr_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(len(ey), len(ty)))
    partner = maximum_bipartite_matching(graph, perm_type="column")  # per edge pixel: its boundary pixel or -1
    done = partner >= 0
    matched_e[ey[done], ex[done]] = True
    matched_t[ty[partner[done]], tx[partner[done]]] = True
    return matched_e, matched_t


# ---- per image counts ---------------------------------------------------------------------------

@dataclass
class BoundaryCounts:
    """Per threshold: boundary pixels matched (summed over the human maps) and in all, edge pixels
    matched to any human map and in all."""

    matched_truth: np.ndarray
    total_truth: np.ndarray
    matched_edges: np.ndarray
    total_edges: np.ndarray

    def to_json(self) -> list:
        return [a.astype(int).tolist() for a in (self.matched_truth, self.total_truth, self.matched_edges, self.total_edges)]

    @classmethod
    def from_json(cls, data: list) -> "BoundaryCounts":
        return cls(*(np.asarray(a, np.int64) for a in data))


def image_counts(edge_map: np.ndarray, truths: Sequence[np.ndarray], thresholds: np.ndarray = THRESHOLDS,
                 max_dist: float = MAX_DIST, thin_edges: bool = True) -> BoundaryCounts:
    """Counts of one soft edge map (values in [0, 1]) against its human boundary maps."""
    h, w = edge_map.shape
    radius = max_dist * float(np.hypot(h, w))
    truths = [np.asarray(t, bool) for t in truths]
    n = len(thresholds)
    counts = [np.zeros(n, np.int64) for _ in range(4)]
    for k, threshold in enumerate(thresholds):
        edges = edge_map >= max(threshold, np.finfo(np.float64).eps)
        if thin_edges:
            edges = thin(edges)
        any_match = np.zeros(edges.shape, bool)
        for truth in truths:
            matched_e, matched_t = match_pixels(edges, truth, radius)
            any_match |= matched_e
            counts[0][k] += int(matched_t.sum())
            counts[1][k] += int(truth.sum())
        counts[2][k] = int(any_match.sum())
        counts[3][k] = int(edges.sum())
    return BoundaryCounts(*counts)


# ---- data set figures ---------------------------------------------------------------------------

def _rpf(matched_truth, total_truth, matched_edges, total_edges):
    eps = np.finfo(np.float64).eps
    recall = np.asarray(matched_truth, np.float64) / np.maximum(eps, total_truth)
    precision = np.asarray(matched_edges, np.float64) / np.maximum(eps, total_edges)
    f = 2 * precision * recall / np.maximum(eps, precision + recall)
    return recall, precision, f


def _best_interpolated(recall: np.ndarray, precision: np.ndarray, thresholds: np.ndarray) -> Tuple[float, float, float, float]:
    """The best F along the curve, interpolating linearly between neighbouring thresholds."""
    if len(thresholds) == 1:
        f = 2 * precision[0] * recall[0] / max(np.finfo(float).eps, precision[0] + recall[0])
        return float(f), float(recall[0]), float(precision[0]), float(thresholds[0])
    d = np.linspace(0, 1, 100)
    r = recall[1:, None] * d + recall[:-1, None] * (1 - d)
    p = precision[1:, None] * d + precision[:-1, None] * (1 - d)
    t = thresholds[1:, None] * d + thresholds[:-1, None] * (1 - d)
    f = 2 * p * r / np.maximum(np.finfo(float).eps, p + r)
    k = np.unravel_index(int(np.argmax(f)), f.shape)
    return float(f[k]), float(r[k]), float(p[k]), float(t[k])


@dataclass
class BoundaryScores:
    ods: float
    ods_threshold: float
    ois: float
    ap: float
    r50: float
    recall: np.ndarray  # the data set's curve, one point per threshold
    precision: np.ndarray


def benchmark(per_image: Sequence[BoundaryCounts], thresholds: np.ndarray = THRESHOLDS) -> BoundaryScores:
    """ODS, OIS, AP and R50 over images (see the module docstring)."""
    if not per_image:
        raise ValueError("no images to score")
    stacked = [np.stack([getattr(c, f) for c in per_image]) for f in ("matched_truth", "total_truth", "matched_edges", "total_edges")]
    recall, precision, _ = _rpf(*(s.sum(0) for s in stacked))
    ods, _, _, ods_threshold = _best_interpolated(recall, precision, thresholds)
    _, _, f_each = _rpf(*stacked)
    best = np.argmax(f_each, axis=1)
    rows = np.arange(len(per_image))
    r_ois, p_ois, _ = _rpf(*(s[rows, best].sum() for s in stacked))
    ois = 2 * p_ois * r_ois / max(np.finfo(float).eps, p_ois + r_ois)
    # Thresholds above every edge pixel have no precision at all: they are left out of the curve.
    some = stacked[3].sum(0) > 0
    ap = _average_precision(recall[some], precision[some]) if some.any() else 0.0
    r50 = _recall_at_half_precision(recall[some], precision[some]) if some.any() else 0.0
    return BoundaryScores(float(ods), float(ods_threshold), float(ois), ap, r50, recall, precision)


def _best_per_value(x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The distinct values of x, ascending, each with the largest y seen with it."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    values, starts = np.unique(x, return_index=True)
    return values, np.maximum.reduceat(y, starts)


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    r, p = _best_per_value(recall, precision)
    if r[0] > 0:
        r, p = np.concatenate([[0.0], r]), np.concatenate([[p[0]], p])
    grid = np.linspace(0, 1, 101)
    inside = grid <= r[-1] + 1e-12
    return float(np.interp(grid[inside], r, p).sum() / len(grid))


def _recall_at_half_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    p, r = _best_per_value(precision, recall)
    return float(np.interp(max(p[0], 0.5), p, r))


def ods_ci_statistic(per_image: List[BoundaryCounts], thresholds: np.ndarray = THRESHOLDS):
    """ODS of a resampled list of images (for the bootstrap)."""
    def statistic(idx: np.ndarray) -> float:
        return benchmark([per_image[i] for i in idx], thresholds).ods
    return statistic

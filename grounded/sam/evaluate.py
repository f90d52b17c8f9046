"""Pieces of the SAM paper's single-point evaluation, shared by tests, benchmarks and training."""

from typing import List, Tuple

import numpy as np


def interior_points(labels: np.ndarray) -> Tuple[List[int], np.ndarray]:
    """One (x, y) point per instance of an instance-label image, at its most interior pixel (the
    maximum of the distance transform): the instance ids and an Nx2 float64 array."""
    from scipy import ndimage

    ids = [int(i) for i in np.unique(labels) if i != 0]
    points = []
    for i in ids:
        dist = ndimage.distance_transform_edt(labels == i)
        y, x = np.unravel_index(np.argmax(dist), dist.shape)
        points.append((x, y))
    return ids, np.array(points, dtype=np.float64).reshape(-1, 2)

"""Means with bootstrap 95% confidence intervals.

Every figure in results.json is a `Stat`: the value, a percentile bootstrap interval and what was
resampled. A mean over instances resamples instances; a figure that is not a mean (AP, cgF1, ODS)
resamples images (or image-phrase pairs) and recomputes the figure on each draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

DEFAULT_BOOTSTRAP = 1000


@dataclass
class Stat:
    value: float
    low: Optional[float]
    high: Optional[float]
    n: int
    over: str  # what the bootstrap resampled: "instances", "images", "pairs"

    def to_json(self) -> dict:
        return {"value": self.value, "ci95": None if self.low is None else [self.low, self.high], "n": self.n,
                "ci_over": self.over}

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.value:.4f}"
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def mean_ci(values: Sequence[float], rounds: int = DEFAULT_BOOTSTRAP, seed: int = 0, over: str = "instances") -> Stat:
    """The mean of `values` with a percentile bootstrap 95% interval (NaN values are left out)."""
    x = np.asarray(values, np.float64).ravel()
    x = x[~np.isnan(x)]
    if not len(x):
        return Stat(float("nan"), None, None, 0, over)
    if rounds <= 0 or len(x) == 1:
        return Stat(float(x.mean()), None, None, len(x), over)
    rng = np.random.default_rng(seed)
    means = np.empty(rounds)
    for start in range(0, rounds, 256):  # bounded memory for large n
        stop = min(start + 256, rounds)
        idx = rng.integers(0, len(x), size=(stop - start, len(x)))
        means[start:stop] = x[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Stat(float(x.mean()), float(low), float(high), len(x), over)


def resampled_ci(n_units: int, statistic: Callable[[np.ndarray], float], rounds: int = DEFAULT_BOOTSTRAP,
                 seed: int = 0, over: str = "images") -> Stat:
    """statistic(indices) on all units, with a percentile bootstrap 95% interval from `rounds` draws of
    `n_units` units with replacement (draws where the statistic is undefined, NaN, are left out)."""
    value = float(statistic(np.arange(n_units)))
    if rounds <= 0 or n_units <= 1:
        return Stat(value, None, None, n_units, over)
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(rng.integers(0, n_units, size=n_units)) for _ in range(rounds)], np.float64)
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return Stat(value, None, None, n_units, over)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Stat(value, float(low), float(high), n_units, over)

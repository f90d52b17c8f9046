"""PNG plots of evaluation results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_plot(series: Dict[str, List[dict]], path: Path, xlabel: str, ylabel: str, title: str, x_start: int = 1,
               x_values: Optional[Sequence[float]] = None) -> Path:
    """x is 1, 2, ... (whole numbers on the axis) unless `x_values` are given."""
    """One line per model, each point a Stat json ({"value", "ci95"}), the 95% interval shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for label, points in series.items():
        x = np.asarray(x_values if x_values is not None else np.arange(x_start, x_start + len(points)), np.float64)
        y = np.array([p["value"] for p in points], np.float64)
        line, = ax.plot(x, y, marker="o", markersize=3, label=label)
        ci = [p.get("ci95") for p in points]
        if all(c is not None for c in ci) and ci:
            lo, hi = np.array(ci, np.float64).T
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
    if x_values is None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_plot(groups: Sequence[str], values: Dict[str, List[dict]], path: Path, ylabel: str, title: str) -> Path:
    """Grouped bars (one bar per model in each group) with 95% interval whiskers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    width = 0.8 / max(1, len(values))
    x = np.arange(len(groups))
    for k, (label, stats) in enumerate(values.items()):
        y = np.array([s["value"] if s else np.nan for s in stats], np.float64)
        err = np.array([[s["value"] - s["ci95"][0], s["ci95"][1] - s["value"]] if s and s.get("ci95") else [0, 0]
                        for s in stats], np.float64).T
        ax.bar(x + (k - (len(values) - 1) / 2) * width, y, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def precision_recall_plot(curves: Dict[str, dict], path: Path, title: str) -> Path:
    """Precision against recall, one line per model, with its ODS point marked and iso-F contours."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=110)
    grid = np.linspace(0.01, 1, 200)
    for f in (0.2, 0.4, 0.6, 0.8):
        r = grid[grid > f / 2]
        ax.plot(r, f * r / (2 * r - f), color="0.85", linewidth=0.8)
    for label, c in curves.items():
        line, = ax.plot(c["recall"], c["precision"], label=f"{label} (ODS {c['ods']:.3f})")
        if "ods_point" in c:
            ax.plot(*c["ods_point"], marker="o", color=line.get_color())
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

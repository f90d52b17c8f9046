"""results.json and results.md: every figure with its 95% interval, a table per task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List

from .tasks.base import json_default
from .tasks.registry import TASKS


def _cell(stat: dict) -> str:
    value = stat["value"]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if stat.get("ci95"):
        lo, hi = stat["ci95"]
        return f"{value:.4f} [{lo:.4f}, {hi:.4f}]"
    return f"{value:.4f}"


def markdown(results: dict) -> str:
    ds = results["dataset"]
    lines: List[str] = [f"# grounded eval: {', '.join(results['tasks'])}", "",
                        f"Data: {ds['source']} ({ds['format']}): {ds['images']} images, {ds['instances']} instances"
                        + (f", {ds['pairs']} image-phrase pairs" if ds.get("pairs") else "") + ".", ""]
    if ds.get("skipped"):
        lines.append("Skipped: " + "; ".join(f"{k}: {v['count']}" for k, v in ds["skipped"].items()) + ".")
        lines.append("")
    for name, task in results["tasks"].items():
        headline = [h for h in _headline(name, task)]
        lines += [f"## {name}", "", "Values: mean [95% bootstrap interval]; intervals over "
                  + ", ".join(sorted({s['ci_over'] for r in task['results'].values() for s in r['metrics'].values()})) + ".", ""]
        lines.append("| model | " + " | ".join(headline) + " | images | s/image |")
        lines.append("|---|" + "---|" * (len(headline) + 2))
        for label, res in task["results"].items():
            cells = [_cell(res["metrics"][h]) if h in res["metrics"] else "-" for h in headline]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {res['images']} | {res['seconds_per_image']:.2f} |")
        lines.append("")
        for label, diff in task.get("differences", {}).items():
            worst = max((abs(v) for v in diff.values() if not math.isnan(v)), default=0.0)
            lines.append(f"{label} minus its reference: largest difference {worst:.2e} over {len(diff)} figures.")
        if task.get("plots"):
            lines += [""] + [f"![{p}]({p})" for p in task["plots"]]
        lines.append("")
    if results.get("errors", {}).get("count"):
        lines.append(f"{results['errors']['count']} images or tasks failed: see errors.jsonl.")
    return "\n".join(lines) + "\n"


def _headline(name: str, task: dict) -> List[str]:
    first = next(iter(task["results"].values()), None)
    if first is None:
        return []
    wanted = [h for h in _task_headline(name) if h in first["metrics"]]
    return wanted or list(first["metrics"])[:6]


def _task_headline(name: str):
    headline = getattr(TASKS.get(name), "headline", ())
    return headline + (("APr", "APc", "APf") if name == "instances" else ())


def write_report(results: dict, out: Path) -> None:
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True, default=json_default))
    (out / "results.md").write_text(markdown(results))

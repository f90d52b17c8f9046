"""The project report: PROJECT/report.md and its plots (report_heldout.png, report_clicks.png).

Per round: the stage, images and masks labelled, masks per image, clicks and seconds per mask (from
the round's log.jsonl, the page's or the simulated annotator's; seconds only where a person
worked), the held-out mIoU and NoC@90 of the model in force and of each fine-tuned seed with 95%
intervals, the acceptance decision, the training time, and for automatic rounds scored against a
ground truth, COCOeval AP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import numpy as np


def round_log(project, entry: dict) -> List[dict]:
    path = project.round_dir(entry) / "labels" / "log.jsonl"
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:
            continue  # a line cut short by a kill
    return lines


def round_figures(project, entry: dict) -> dict:
    log = [line for line in round_log(project, entry) if not line.get("automatic")]
    clicks = [line.get("num_clicks", 0) for line in log]
    seconds = [line["seconds"] for line in log if line.get("seconds") is not None]
    images = len(entry["images"])
    masks = entry.get("masks")
    return {"images": images, "masks": masks, "masks_per_image": None if masks is None else masks / max(1, images),
            "clicks_per_mask": float(np.mean(clicks)) if clicks else None, "logged_masks": len(log),
            "seconds_per_mask": float(np.mean(seconds)) if seconds else None,
            "confirmed": sum(1 for line in log if line.get("confirmed")),
            "corrected": sum(1 for line in log if line.get("corrects") is not None)}


def _stat(stat: Optional[dict], digits: int = 3) -> str:
    if not stat:
        return "–"
    ci = stat.get("ci95")
    return f"{stat['value']:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _num(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def write_report(project) -> Path:
    from .finetune import ACCEPTANCE_RULE

    root = project.root
    lines = [f"# Data engine report: {root.name}", "",
             f"Data: `{project.data}`; held-out images: {len(project.heldout_names())}; base model: "
             f"`{project.state['model']['base']}`; model in force: `{project.state['model']['current']}`.", "",
             f"Acceptance rule: {ACCEPTANCE_RULE}.", "",
             "| round | stage | status | images | masks | masks/image | clicks/mask | s/mask | held-out mIoU (in force) | "
             "held-out NoC@90 (in force) | decision | training s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    details = []
    for entry in project.rounds:
        f = round_figures(project, entry)
        decision = entry.get("decision") or {}
        models = decision.get("models", {})
        verdict = ("kept " + decision["kept_seed"] if decision.get("accepted") else
                   decision.get("why", "–") if decision else "no fine-tuning" if entry["status"] == "done" else "–")
        lines.append(f"| {entry['index']} | {entry['stage']} | {entry['status']} | {f['images']} | {f['masks'] if f['masks'] is not None else '–'} | "
                     f"{_num(f['masks_per_image'])} | {_num(f['clicks_per_mask'])} | {_num(f['seconds_per_mask'], 1)} | "
                     f"{_stat(models.get('current', {}).get('mIoU'))} | {_stat(models.get('current', {}).get('NoC@90'), 2)} | "
                     f"{verdict} | {_num(entry.get('train_seconds'), 0)} |")
        if models:
            details.append(f"### Round {entry['index']} ({entry['stage']}): held-out figures over {decision['objects']} objects")
            details.append("")
            details.append("| model | mIoU (single click) | NoC@90 | automatic masks AR@100 |")
            details.append("|---|---|---|---|")
            for label, m in models.items():
                details.append(f"| {label} | {_stat(m['mIoU'])} | {_stat(m['NoC@90'], 2)} | {_stat(m.get('AR@100'))} |")
            d = decision["difference"]
            details += ["", f"Seeds' mean - model in force, per object: mIoU {_stat(d['mIoU'], 4)}, NoC@90 "
                        f"{_stat(d['NoC@90'], 3)}, AR@100 {_stat(d.get('AR@100'), 4)}. Decision: {decision['why']}" +
                        (f"; kept {decision['kept_seed']} as models/v{entry['index']:03d}." if decision.get("accepted") else "."), ""]
        if entry.get("auto_ap"):
            ap = entry["auto_ap"]
            details += [f"### Round {entry['index']} (auto): automatic masks against the ground truth", "",
                        f"COCOeval segm over {ap.get('images')} images: AP {_num(ap.get('AP'), 3)}, AP50 {_num(ap.get('AP50'), 3)}, "
                        f"AP75 {_num(ap.get('AP75'), 3)}, AR@100 {_num(ap.get('AR@100'), 3)} ({ap.get('masks')} masks, "
                        f"{ap.get('truth')} true objects).", ""]
        if entry["stage"] == "semi" and "prefilled" in entry:
            f_ = round_figures(project, entry)
            setting = entry.get("prefill") or {}
            source = ("" if setting.get("source") != "text" else
                      f" of the categories {', '.join(setting['categories'])} ("
                      + ("SAM 3's concepts" if setting["segmenter"] == "sam3" else f"{setting['detector']} + SAM") + ")")
            details += [f"Round {entry['index']} (semi): the model in force pre-filled {entry['prefilled']} confident masks"
                        f"{source}; {f_['confirmed']} were accepted as they were, {f_['corrected']} corrected.", ""]
        if entry.get("unreviewed_prefill"):
            details += [f"Round {entry['index']}: {entry['unreviewed_prefill']} pre-filled masks were never reviewed and "
                        "are not in the dataset.", ""]
        if entry.get("unreadable"):
            details += [f"Round {entry['index']}: {len(entry['unreadable'])} images could not be read and were skipped: "
                        + "; ".join(f"{name} ({why})" for name, why in sorted(entry["unreadable"].items())), ""]
        if entry.get("removed_images") or entry.get("added_images"):
            details += [f"Round {entry['index']}: at its start, {len(entry.get('added_images', []))} images were new in "
                        f"the data folder and {len(entry.get('removed_images', []))} were gone (left out of training).", ""]
    lines += ["", *details]
    plots = write_plots(project)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plots(project) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [e for e in project.rounds if (e.get("decision") or {}).get("models")]
    out = []
    if rounds:
        metrics = [m for m in ("mIoU", "NoC@90", "AR@100") if all(m in e["decision"]["models"]["current"] for e in rounds)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
        for ax, metric in zip(axes, metrics):
            for offset, which, name in ((-0.1, "before", "model in force"), (0.1, "after", "fine-tuned (best seed)")):
                xs, ys, lo, hi = [], [], [], []
                for e in rounds:
                    models = e["decision"]["models"]
                    label = "current" if which == "before" else max(
                        (k for k in models if k != "current"), key=lambda k: models[k]["mIoU"]["value"])
                    stat = models[label][metric]
                    xs.append(e["index"] + offset)
                    ys.append(stat["value"])
                    ci = stat["ci95"] or [stat["value"], stat["value"]]
                    lo.append(stat["value"] - ci[0])
                    hi.append(ci[1] - stat["value"])
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=name)
            ax.set_xlabel("round")
            ax.set_ylabel(f"held-out {metric}")
            ax.set_xticks([e["index"] for e in rounds])
            ax.legend()
        fig.suptitle("Held-out figures per round (95% bootstrap intervals)")
        out.append(save_figure(fig, project.root / "report_heldout.png"))
    labelled = [(e, round_figures(project, e)) for e in project.rounds]
    labelled = [(e, f) for e, f in labelled if f["clicks_per_mask"] is not None]
    if labelled:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.bar([f"{e['index']} {e['stage']}" for e, _ in labelled], [f["clicks_per_mask"] for _, f in labelled])
        ax.set_ylabel("clicks per mask")
        ax.set_title("Annotation effort per round")
        out.append(save_figure(fig, project.root / "report_clicks.png"))
    return out


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def labelling_progress(project, entry: dict) -> tuple:
    """A round still labelling: the images with saved masks and the masks, from its annotation store
    (the page saves there as the person works; the simulated annotator and the auto stage too), so a
    page round's status shows the work done so far. Pre-filled masks nobody reviewed do not count."""
    from .project import image_key

    labels = project.round_dir(entry) / "labels" / "images"
    images, masks = set(entry.get("labelled", [])), 0
    for name in entry["images"]:
        try:
            saved = json.loads((labels / f"{image_key(name)}.json").read_text())["annotations"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not saved yet (or being written)
        kept = [a for a in saved if not a.get("prefill")]
        masks += len(kept)
        if kept:
            images.add(name)
    return len(images), masks


def status_text(project) -> str:
    """`grounded engine status`: the project at a glance."""
    scan = project.scan()
    pool = project.pool(scan["present"])
    lines = [f"project {project.root} (format version {project.state['version']})",
             f"data {project.data}: {len(scan['present'])} images, {len(project.heldout_names())} held out, "
             f"{len(project.labelled_names())} labelled, {len(pool)} unlabelled"
             + (f"; {len(scan['added'])} new since the last round" if scan["added"] else "")
             + (f"; {len(scan['removed'])} gone: {', '.join(scan['removed'][:5])}" if scan["removed"] else ""),
             f"model in force: {project.state['model']['current']}"]
    for entry in project.rounds:
        f = round_figures(project, entry)
        decision = entry.get("decision") or {}
        if f["masks"] is not None:
            done = f"{f['masks']} masks"
        else:
            images, masks = labelling_progress(project, entry)
            done = f"{images} images labelled ({masks} masks so far)"
        lines.append(f"round {entry['index']} {entry['stage']}: {entry['status']}, {f['images']} images, {done}"
                     + (f", {f['clicks_per_mask']:.2f} clicks/mask" if f["clicks_per_mask"] is not None else "")
                     + (f"; {decision.get('why')}" if decision else "")
                     + (f"; {len(entry['unreadable'])} unreadable, skipped: {', '.join(sorted(entry['unreadable'])[:5])}"
                        if entry.get("unreadable") else ""))
    unfinished = project.unfinished()
    if unfinished:
        lines.append(f"round {unfinished['index']} is unfinished ({unfinished['status']}): "
                     f"`grounded engine round {project.root}` resumes it")
    return "\n".join(lines)

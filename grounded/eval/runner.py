"""Runs evaluation tasks over a data set for several models, image by image, resumably.

Images are the outer loop: each image is read once and every task and model sees it before the next
image, so a model's predictor encodes it once for all tasks (and for other models with the same
weights). Each (task, model) appends one JSON line per image to `records/<task>/<model>.jsonl` as
soon as the image is done; a killed run continues with `resume=True` where it stopped. An image that
cannot be read, or that fails in one task, is written to `errors.jsonl` and skipped; the rest go on.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .datasets import Dataset, EvalImage
from .segmenters import Segmenter
from .tasks.base import Options, Summary, Task, json_default, slug
from .tasks.registry import TASKS


class RunFolder:
    """The output folder: run.json (what was asked), records/, errors.jsonl."""

    def __init__(self, out: Path, run_info: dict, resume: bool):
        self.out = Path(out)
        info_path = self.out / "run.json"
        if info_path.exists():
            if not resume:
                raise ValueError(f"{self.out} already holds an evaluation; pass --resume to continue it, "
                                      "or choose another --out")
            before = json.loads(info_path.read_text())
            changed = _incompatible(before, run_info)
            if changed:
                raise ValueError(f"--resume: this run's {', '.join(changed)} differ from the run in {self.out}; "
                                 "use another --out for different settings")
            # A resumed run may cover more images, models or tasks: the record of each is kept.
            for task, settings in before.get("task_settings", {}).items():
                run_info.setdefault("task_settings", {}).setdefault(task, settings)
        self.out.mkdir(parents=True, exist_ok=True)
        info_path.write_text(json.dumps(run_info, indent=2, default=str))
        self._done: Dict[tuple, Dict[str, dict]] = {}

    def _path(self, task: str, label: str) -> Path:
        return self.out / "records" / task / f"{slug(label)}.jsonl"

    def lines(self, task: str, label: str) -> Dict[str, dict]:
        """Finished images of (task, model): image name -> line (a truncated last line is ignored)."""
        key = (task, label)
        if key not in self._done:
            done = {}
            path = self._path(task, label)
            if path.exists():
                for text in path.read_text().splitlines():
                    try:
                        line = json.loads(text)
                    except ValueError:
                        continue
                    done[line["image"]] = line
            self._done[key] = done
        return self._done[key]

    def append(self, task: str, label: str, item: EvalImage, record: dict, seconds: float) -> None:
        path = self._path(task, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"image": item.name, "id": item.id, "seconds": seconds, "record": record}
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a kill: start a fresh one
                    f.write(b"\n")
            f.write((json.dumps(line, default=json_default) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.lines(task, label)[item.name] = line

    def error(self, item: EvalImage, task: Optional[str], label: Optional[str], message: str) -> None:
        with open(self.out / "errors.jsonl", "a") as f:
            f.write(json.dumps({"image": item.name, "task": task, "model": label, "error": message}) + "\n")

    def errors(self) -> List[dict]:
        path = self.out / "errors.jsonl"
        return [json.loads(t) for t in path.read_text().splitlines() if t.strip()] if path.exists() else []


def _incompatible(before: dict, now: dict) -> List[str]:
    """What makes the records in a folder unusable for this run: another data set, a model whose
    weights changed, or a task whose settings changed."""
    changed = []
    for key in ("source", "format"):
        if before.get("dataset", {}).get(key) != now.get("dataset", {}).get(key):
            changed.append(f"data set {key}")
    # A model label whose weights changed (retrained into the same folder): its finished records are
    # another model's.
    weights = {m.get("label"): m.get("weights") for m in before.get("models", [])}
    for model in now.get("models", []):
        if weights.get(model["label"]) not in (None, model["weights"]):
            changed.append(f"weights of model {model['label']}")
    for task, settings in now.get("task_settings", {}).items():
        old = before.get("task_settings", {}).get(task)
        if old is not None and json.loads(json.dumps(old, default=str)) != json.loads(json.dumps(settings, default=str)):
            changed.append(f"{task} settings")
    return changed


def _resolved(error: dict, folder: RunFolder, tasks: Sequence[Task], segmenters: Sequence[Segmenter]) -> bool:
    """Whether a logged error was made good by a later (resumed) run."""
    if error.get("task") is not None:
        return error["image"] in folder.lines(error["task"], error["model"])
    return any(error["image"] in folder.lines(t.name, s.label) for t in tasks for s in segmenters)


def _read_image(item: EvalImage) -> np.ndarray:
    from ..io.image import load_image

    image = load_image(item.path)
    if item.height is not None and image.shape[:2] != (item.height, item.width):
        raise ValueError(f"{item.path} is {image.shape[1]}x{image.shape[0]}, its annotations say {item.width}x{item.height}")
    return image


def run_tasks(tasks: Sequence[Task], dataset: Dataset, segmenters: Sequence[Segmenter], folder: RunFolder,
              progress: bool = True) -> None:
    """Every task for every model on every image not finished yet (see the module docstring)."""
    import torch
    from tqdm.auto import tqdm

    # Whatever mode the caller is in (grad, no_grad, inference_mode), the models run without autograd
    # on ordinary tensors: an embedding cached here stays usable by any later call.
    with torch.inference_mode(False), torch.no_grad():
        _run_images(tasks, dataset, segmenters, folder, progress, tqdm)


def _run_images(tasks, dataset, segmenters, folder, progress, tqdm) -> None:
    pairs = [(t, s) for t in tasks for s in segmenters if t.reference or s.kind != "reference"]
    # Drawn at every image (an image takes seconds; tqdm's 0.1 s default would skip fast ones).
    bar = tqdm(dataset.images, desc=f"eval {','.join(t.name for t in tasks)}", unit="image", disable=not progress,
               dynamic_ncols=True, mininterval=0, miniters=1)
    for item in bar:
        todo = [(t, s) for t, s in pairs if item.name not in folder.lines(t.name, s.label)]
        if not todo:
            continue
        try:
            image = _read_image(item)
        except Exception as err:  # noqa: BLE001 - a bad file is reported and skipped, the run goes on
            folder.error(item, None, None, f"{type(err).__name__}: {err}")
            continue
        for task, segmenter in todo:
            bar.set_postfix_str(f"{task.name} {segmenter.label}", refresh=False)
            start = time.perf_counter()
            try:
                record = task.run_image(segmenter, image, item)
            except Exception as err:  # noqa: BLE001 - as above, for one task on one image
                folder.error(item, task.name, segmenter.label, f"{type(err).__name__}: {err}")
                continue
            folder.append(task.name, segmenter.label, item, record, time.perf_counter() - start)


def summarize(tasks: Sequence[Task], dataset: Dataset, segmenters: Sequence[Segmenter], folder: RunFolder) -> dict:
    """results.json's `tasks` part: per task and model (variant) its figures, plots and differences."""
    out = {}
    for task in tasks:
        summaries: Dict[str, Summary] = {}
        entry = {"settings": task.settings(), "results": {}, "plots": [], "differences": {}}
        for segmenter in segmenters:
            if segmenter.kind == "reference" and not task.reference:
                continue
            lines = folder.lines(task.name, segmenter.label)
            records = [(item, lines[item.name]["record"]) for item in dataset.images if item.name in lines]
            seconds = [lines[item.name]["seconds"] for item in dataset.images if item.name in lines]
            written = task.write_predictions(records, segmenter.label, folder.out) if records else None
            if written is not None:
                entry.setdefault("predictions", {})[segmenter.label] = str(written.relative_to(folder.out))
            for variant in task.variants(segmenter):
                if not records:
                    continue
                summary = task.summarize(records, variant)
                summaries[variant] = summary
                entry["results"][variant] = {**summary.to_json(), "images": len(records), "kind": segmenter.kind,
                                             "seconds_per_image": float(np.mean(seconds))}
        entry["differences"] = _differences(entry["results"])
        if summaries:
            entry["plots"] = [str(p.relative_to(folder.out)) for p in task.plot(summaries, folder.out)]
        out[task.name] = entry
    return out


def _differences(results: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """grounded minus reference for every figure, per model that has a reference beside it."""
    out = {}
    for label, res in results.items():
        ref = results.get(f"{label.split('@')[0]} (reference)")
        if res["kind"] != "grounded" or ref is None or "@" in label:
            continue
        out[label] = {k: res["metrics"][k]["value"] - ref["metrics"][k]["value"]
                      for k in res["metrics"] if k in ref["metrics"]}
    return out


def evaluate(task_names: Sequence[str], dataset: Dataset, segmenters: Sequence[Segmenter], out: Path,
             options: Optional[Options] = None, resume: bool = False, progress: bool = True,
             run_info: Optional[dict] = None, log: Callable[[str], None] = print) -> dict:
    """Run the tasks and write results.json, results.md and the plots into `out`; returns the results."""
    from .report import write_report

    options = options or Options()
    options.out = Path(out)
    unknown = [t for t in task_names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    tasks = [TASKS[name](dataset, options) for name in task_names]
    info = dict(run_info or {})
    info.update(tasks=list(task_names), dataset=dataset.summary(), task_settings={t.name: t.settings() for t in tasks},
                models=[{"label": s.label, "kind": s.kind, "weights": s.weights} for s in segmenters])
    folder = RunFolder(Path(out), info, resume)
    run_tasks(tasks, dataset, segmenters, folder, progress)
    results = {"dataset": dataset.summary(), "models": info["models"], "settings": {
        k: v for k, v in info.items() if k not in ("dataset", "models")}, "tasks": summarize(tasks, dataset, segmenters, folder)}
    errors = [e for e in folder.errors() if not _resolved(e, folder, tasks, segmenters)]
    results["errors"] = {"count": len(errors), "first": errors[:5]}
    write_report(results, folder.out)
    return results

"""Between rounds: fine-tune on everything labelled so far, measure on the held-out split, keep or not.

Training: the existing trainer (grounded.sam.training.Trainer) once per seed (at least 3), each from
the model in force, on the newest dataset version (images still in the data folder); checkpoints
in the round folder, so a killed round resumes its training where it stopped; the encoder's
embeddings are cached once for the project (the encoder is frozen).

Measurement: grounded eval's `points` and `proposals` protocols (grounded.eval.evaluate, resumable)
on the held-out split, for the model in force and each seed's model: per object, the single-click
IoU (the centre click's top-scoring mask), NoC@90 (clicks until IoU 0.9, up to 20) and the automatic
masks' recall (AR@100, with the auto stage's settings). The last guards the semi and auto stages: a
decoder fine-tuned on clicks can click better while its predicted IoU and stability, which select
the automatic masks, stop finding any. On the stardist proof (bench/engine_stardist.py) training the
IoU head too did exactly that (predicted IoU of the grid points' first output 0.97 -> 0.78 while its
true IoU rose 0.85 -> 0.87: AR@100 0.634 -> 0.000), so by default only the mask heads train and the
IoU head keeps the scale the auto stage's thresholds are set on (project.DEFAULT_TRAIN).

The acceptance rule (ACCEPTANCE_RULE): per held-out object, the seeds' mean minus the model in force;
the fine-tuned model is kept when the mean NoC@90 difference is below 0 or the mean IoU difference
above 0 beyond the bootstrap 95% interval over objects (the whole interval on the better side), and
neither figure's interval lies wholly on the worse side. The seed kept is the one with the highest
held-out mIoU. Otherwise the model in force stays, and the report says so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

ACCEPTANCE_RULE = ("kept if, over >= 3 seeds, the per-object held-out NoC@90 difference (seeds' mean - model in force) "
                   "has its bootstrap 95% interval wholly below 0, or the single-click IoU difference wholly above 0, "
                   "and neither interval, nor that of the automatic masks' recall (AR@100 with the auto stage's "
                   "settings), lies wholly on the worse side")
MIN_SEEDS = 3


def training_items(project, dataset_path: Path, log=print):
    """TrainItems of the dataset version's images that are still in the data folder, as they were
    labelled: a file since replaced by one of another size (its masks no longer fit) or that cannot be
    read any more is left out, and said so."""
    from ..io.image import ImageError, load_image
    from ..rle import decode_rle
    from ..sam.training.data import TrainItem
    from .project import read_json

    coco = read_json(dataset_path, "a dataset version")
    by_image: Dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(decode_rle(a["segmentation"]))
    items = []
    for im in coco["images"]:
        path = project.data / im["file_name"]
        if im["id"] not in by_image or not path.exists():
            continue  # an image removed from the data folder: its masks stay in the dataset, out of training
        try:
            image = load_image(path)
        except (ImageError, OSError) as err:
            log(f"  {im['file_name']}: left out of training, cannot be read ({err})")
            continue
        if image.shape[:2] != (im["height"], im["width"]):
            log(f"  {im['file_name']}: left out of training: the file is {image.shape[1]}x{image.shape[0]} now, "
                f"its masks {im['width']}x{im['height']} (replaced since it was labelled)")
            continue
        items.append(TrainItem(f"engine-{im['id']}", image, np.stack(by_image[im["id"]])))
    return items


def check_heldout(project) -> List[str]:
    """The held-out images still in the data folder, each checked against heldout.json: one replaced by
    another size, or unreadable, is refused here, before any training (measuring on it would skip it
    for some models and not others, or on nothing)."""
    from ..io.image import ImageError, load_image
    from .project import ProjectError, read_json

    path = project.root / project.state["heldout"]["coco"]
    coco = read_json(path, "the held-out split")
    present = []
    for im in coco.get("images", []):
        file = project.data / im["file_name"]
        if not file.exists():
            continue  # removed: measured on the others
        try:
            shape = load_image(file).shape[:2]
        except (ImageError, OSError) as err:
            raise ProjectError(f"held-out image {file} cannot be read ({err}): restore it, or remove it from the "
                               "data folder to measure on the others") from None
        if shape != (im["height"], im["width"]):
            raise ProjectError(f"held-out image {file} is {shape[1]}x{shape[0]} now, {im['width']}x{im['height']} in {path}: "
                               "restore the original file, or remove it from the data folder to measure on the others")
        present.append(im["file_name"])
    return present


def train_seeds(project, entry: dict, items, log=print) -> List[Path]:
    """One fine-tuned model per seed (folders with save_pretrained's layout); finished seeds are kept."""
    import torch

    from ..sam.training import TrainConfig, Trainer
    from ..sam.training.data import ArrayDataset
    from .stages import load_model

    settings = project.state["train"]
    seeds = [int(s) for s in settings["seeds"]]
    if len(seeds) < MIN_SEEDS:
        raise ValueError(f"the acceptance rule needs at least {MIN_SEEDS} seeds; the project has {seeds}")
    folders = []
    start = time.time()
    for seed in seeds:
        out = project.round_dir(entry) / "train" / f"seed_{seed}"
        final = out / "final"
        folders.append(final)
        if (final / "model.safetensors").exists():
            continue
        model = load_model(entry["model"])
        config = TrainConfig(model=entry["model"], out_dir=str(out), steps=int(settings["steps"]), lr=float(settings["lr"]),
                             max_masks=int(settings["max_masks"]), trainable=list(settings["trainable"]),
                             interactive=dict(settings["interactive"]), seed=seed, progress=False,
                             checkpoint_every=max(1, int(settings["steps"]) // 4),
                             embedding_cache=str(project.root / "cache" / "embeddings"))
        with torch.inference_mode(False), torch.enable_grad():
            torch.manual_seed(seed)
            trainer = Trainer(config, model=model, dataset=ArrayDataset(items))
            if trainer.latest_checkpoint() is not None:
                trainer.load_checkpoint()
                log(f"  seed {seed}: resumed at step {trainer.step}")
            history = trainer.train()
        tmp = out / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.save_model(tmp)  # SAM's or SAM 2's folder layout
        os.replace(tmp, final)
        last = history[-1] if history else {}
        log(f"  seed {seed}: {trainer.step} steps, last loss {last.get('loss', float('nan')):.4f}")
    entry["train_seconds"] = entry.get("train_seconds", 0.0) + (time.time() - start)
    return folders


def heldout_dataset(project):
    from ..eval import load_dataset

    return load_dataset([str(project.root / project.state["heldout"]["coco"])], images_dir=str(project.data))


def evaluate_models(project, out: Path, models: Dict[str, str], log=print) -> Dict[str, Dict[str, np.ndarray]]:
    """The points and proposals protocols on the held-out split for {label: model spec}: per label, the
    per-object single-click IoU ("iou"), NoC@90 ("noc90") and automatic-mask recall ("ar100"), in the
    same object order for every label."""
    import torch

    from ..eval import evaluate
    from ..eval.tasks.base import Options
    from ..eval.tasks.points import noc
    from ..eval.tasks.proposals import recall_per_object
    from .stages import load_model, segmenter_for

    settings = project.state["train"]
    data = heldout_dataset(project)
    with torch.inference_mode(False), torch.no_grad():
        shared: dict = {}
        segmenters = [segmenter_for(load_model(spec), label, shared) for label, spec in models.items()]
        options = Options(clicks=int(settings["clicks"]), bootstrap=int(settings["bootstrap"]),
                          amg=dict(project.state["stage_settings"]["auto"]))
        evaluate(["points", "proposals"], data, segmenters, out, options, resume=True, progress=False, log=lambda *_: None)
    figures = {}
    for label in models:
        lines = _records(out, "points", label)
        objects = sorted(((line["image"], o["id"], o) for line in lines for o in line["record"]["objects"]), key=lambda x: x[:2])
        iou = np.array([o["center"]["ious"][int(np.argmax(o["center"]["scores"]))] for _, _, o in objects])
        noc90 = np.array([noc(np.asarray(o["clicks"]), 0.90) for _, _, o in objects], np.float64)
        proposals = sorted(_records(out, "proposals", label), key=lambda line: line["image"])
        ar100 = np.array(recall_per_object([(None, line["record"]) for line in proposals], "all", 100), np.float64)
        figures[label] = {"iou": iou, "noc90": noc90, "ar100": ar100}
    return figures


def _records(out: Path, task: str, label: str) -> List[dict]:
    from ..eval.tasks.base import slug

    path = out / "records" / task / f"{slug(label)}.jsonl"
    if not path.exists():
        raise RuntimeError(f"the held-out evaluation measured no image with {label} ({task}): "
                           f"{out / 'errors.jsonl'} says why")
    return [json.loads(t) for t in path.read_text().splitlines() if t.strip()]


def decide(figures: Dict[str, Dict[str, np.ndarray]], seeds: List[str], baseline: str = "current",
           bootstrap: int = 1000) -> dict:
    """The acceptance rule (module docstring) on evaluate_models' figures."""
    from ..eval.stats import mean_ci

    base = figures[baseline]
    d_iou = np.mean([figures[s]["iou"] for s in seeds], axis=0) - base["iou"]
    d_noc = np.mean([figures[s]["noc90"] for s in seeds], axis=0) - base["noc90"]
    d_ar = np.mean([figures[s]["ar100"] for s in seeds], axis=0) - base["ar100"]
    iou_ci, noc_ci, ar_ci = mean_ci(d_iou, bootstrap), mean_ci(d_noc, bootstrap), mean_ci(d_ar, bootstrap)
    better = (noc_ci.high is not None and noc_ci.high < 0) or (iou_ci.low is not None and iou_ci.low > 0)
    worse_in = [name for name, bad in (("NoC@90", noc_ci.low is not None and noc_ci.low > 0),
                                       ("mIoU", iou_ci.high is not None and iou_ci.high < 0),
                                       ("automatic-mask recall", ar_ci.high is not None and ar_ci.high < 0)) if bad]
    worse = bool(worse_in)
    best = max(seeds, key=lambda s: (figures[s]["iou"].mean(), -figures[s]["noc90"].mean()))
    per_model = {label: {"mIoU": mean_ci(f["iou"], bootstrap).to_json(), "NoC@90": mean_ci(f["noc90"], bootstrap).to_json(),
                         "AR@100": mean_ci(f["ar100"], bootstrap).to_json()} for label, f in figures.items()}
    return {"accepted": bool(better and not worse), "kept_seed": best if better and not worse else None,
            "difference": {"mIoU": iou_ci.to_json(), "NoC@90": noc_ci.to_json(), "AR@100": ar_ci.to_json()},
            "models": per_model,
            "objects": int(len(d_iou)), "rule": ACCEPTANCE_RULE,
            "why": ("better beyond the 95% interval" if better and not worse else
                    f"worse beyond the 95% interval ({', '.join(worse_in)}): kept out" if worse else
                    "not better beyond the 95% interval: the model in force stays")}

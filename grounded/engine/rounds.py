"""One round of the data engine, as steps that a killed round resumes from where it stopped.

    labelling  -> the stage labels the round's images into rounds/NNN-STAGE/labels (image by image)
    dataset    -> datasets/vNNN.json: the previous version plus this round's accepted masks
    training   -> one fine-tuned model per seed (finetune.py), when the round fine-tunes
    evaluating -> held-out figures, the acceptance rule; a kept model is copied to models/vNNN
    done

The round's entry in project.json records its step; every step's output is written before the
entry moves on, so nothing accepted is lost and no step's work is done twice.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Optional

from .project import STAGES, Project, ProjectError, coco_file, image_key, read_json, write_json


def start_round(project: Project, stage: str, take: Optional[int] = None, images: Optional[list] = None,
                finetune: Optional[bool] = None, prefill: Optional[dict] = None) -> dict:
    """A new round's entry: the images it takes (the first `take` of the pool, or `images`); a semi
    round's `prefill` setting (text_prefill.prefill_setting; default the automatic masks) is kept in
    it, so that a resumed round pre-fills the same way."""
    from .text_prefill import check_detector, is_sam3, prefill_setting

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    spec = project.model_spec()
    if prefill and stage != "semi":
        raise ValueError(f"a pre-fill setting is for semi rounds, not {stage}")
    prefill = prefill or prefill_setting(stage, None, model=spec)
    finetune = stage != "auto" if finetune is None else bool(finetune)
    if is_sam3(spec) and (stage == "auto" or finetune):
        raise ValueError(f"the model in force {spec} is SAM 3: it makes no automatic masks (no auto stage) and the "
                         "engine fine-tunes SAM 1's decoder only: run manual and semi rounds with --no-finetune")
    if take is not None and take < 1:
        raise ValueError(f"--take is how many unlabelled images the round labels: at least 1, got {take}")
    check_detector(prefill)
    scan = project.scan()
    pool = project.pool(scan["present"])
    if images:
        images = list(dict.fromkeys(images))  # an image named twice is labelled once
        unknown = [n for n in images if n not in pool]
        if unknown:
            raise ValueError(f"{unknown} are not unlabelled images of {project.data} (labelled, held out or missing)")
        chosen = list(images)
    else:
        chosen = pool[:take] if take else pool
    if not chosen:
        raise ValueError(f"an empty round: no unlabelled images left in {project.data} "
                         f"({len(scan['present'])} images: {len(project.heldout_names())} held out, the rest labelled)")
    entry = {"index": len(project.rounds) + 1, "stage": stage, "images": chosen, "status": "labelling",
             "model": spec, "finetune": finetune, "started": time.time(), "added_images": scan["added"],
             "removed_images": scan["removed"], **({"prefill": prefill} if prefill else {})}
    project.rounds.append(entry)
    project.save()
    return entry


def run_round(project: Project, entry: dict, truth: Optional[str] = None, serve: Optional[Callable] = None,
              finish: bool = False, log: Callable[[str], None] = print) -> dict:
    """Carry the round on from its recorded step. Manual and semi rounds are labelled by the simulated
    annotator when `truth` (a COCO file) is given, else on the page: `serve(session)` runs it until
    the person stops it, and the round waits at labelling until it is run again with `finish`."""
    if entry["stage"] == "review" and entry["status"] == "labelling":
        raise ValueError(f"round {entry['index']} is a Label Studio import that was interrupted: run grounded engine "
                         f"import-ls {project.root} {entry['source']} again to finish it")
    if truth:  # kept in the entry: a resumed round uses the same ground truth
        entry["truth"] = str(Path(truth).resolve())
    truth_coco = read_json(Path(entry["truth"]), "the --truth file") if entry.get("truth") else None
    if entry["status"] == "labelling" and not _label(project, entry, truth_coco, serve, finish, log):
        return entry
    if entry["status"] == "dataset":
        write_dataset(project, entry)
        if truth_coco is not None and entry["stage"] == "auto":
            entry["auto_ap"] = auto_ap(project, entry, truth_coco)
        entry["status"] = "training" if entry["finetune"] else "done"
        project.save()
    if entry["status"] == "training":
        from .finetune import check_heldout, train_seeds, training_items

        if not project.heldout_names():
            entry["decision"] = {"accepted": False, "why": "no held-out split: a fine-tuned model cannot be judged, none trained"}
            entry["status"] = "done"
        elif not check_heldout(project):
            entry["decision"] = {"accepted": False, "why": "every held-out image is gone from the data folder: a fine-tuned "
                                 "model cannot be judged, none trained"}
            entry["status"] = "done"
        else:
            items = training_items(project, project.dataset_path(entry["index"]), log)
            if not items:
                entry["decision"] = {"accepted": False, "why": "nothing labelled to train on"}
                entry["status"] = "done"
            else:
                log(f"round {entry['index']}: fine-tuning on {len(items)} images, seeds {project.state['train']['seeds']}")
                train_seeds(project, entry, items, log)
                entry["status"] = "evaluating"
        project.save()
    if entry["status"] == "evaluating":
        _evaluate(project, entry, log)
    entry["finished"] = entry.get("finished") or time.time()
    project.save()
    from .report import write_report

    write_report(project)
    return entry


def _label(project: Project, entry: dict, truth_coco: Optional[dict], serve: Optional[Callable], finish: bool,
           log: Callable[[str], None]) -> bool:
    """The labelling step; False when the round waits for a person on the page (run again to go on)."""
    from . import stages

    log(f"round {entry['index']} ({entry['stage']}): labelling {len(entry['images'])} images with {entry['model']}")
    model = stages.load_model(entry["model"])
    if entry["stage"] == "auto":
        store = stages.open_store(project, entry)
        settings = dict(project.state["stage_settings"]["auto"])
        if entry.get("crops"):
            settings.update(stages.CROP_SETTINGS)
        stages.label_auto(project, entry, store, stages.segmenter_for(model), settings, log)
    elif truth_coco is not None:
        segmenter = stages.segmenter_for(model)
        initial = stages.prefill(project, entry, model, segmenter, log) if entry["stage"] == "semi" else None
        store = stages.open_store(project, entry, initial)
        stages.label_simulated(project, entry, store, segmenter, stages.truth_masks(truth_coco, project), log)
    elif not finish:
        if serve is None:
            raise ValueError(f"round {entry['index']} ({entry['stage']}) needs a person on the page, or --truth "
                             "for the simulated annotator")
        serve(stages.page_session(project, entry, model))
        project.save()
        log(f"labelling saved in {project.round_dir(entry) / 'labels'}; run the same command to go on labelling, "
            f"or `grounded engine round {project.root} --finish` when the round's images are done")
        return False
    entry["status"] = "dataset"
    entry["labelling_finished"] = time.time()
    project.save()
    return True


def _evaluate(project: Project, entry: dict, log: Callable[[str], None]) -> None:
    """Held-out figures of the model in force and of each seed, the acceptance rule; a kept model is
    copied to models/vNNN and put in force."""
    from .finetune import decide, evaluate_models

    seeds = [f"seed_{s}" for s in project.state["train"]["seeds"]]
    train_dir = project.round_dir(entry) / "train"
    models = {"current": entry["model"], **{s: str(train_dir / s / "final") for s in seeds}}
    log(f"round {entry['index']}: held-out evaluation of the model in force and {len(seeds)} fine-tuned seeds")
    figures = evaluate_models(project, project.round_dir(entry) / "eval", models, log)
    decision = decide(figures, seeds, bootstrap=int(project.state["train"]["bootstrap"]))
    if decision["accepted"]:
        target = project.root / "models" / f"v{entry['index']:03d}"
        if not (target / "model.safetensors").exists():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(train_dir / decision["kept_seed"] / "final", tmp)
            tmp.rename(target)
        project.state["model"]["current"] = f"models/{target.name}"
    entry["decision"] = decision
    entry["status"] = "done"
    project.save()
    log(f"round {entry['index']}: {decision['why']} (mIoU difference {fmt(decision['difference']['mIoU'])}, "
        f"NoC@90 difference {fmt(decision['difference']['NoC@90'])}, "
        f"AR@100 difference {fmt(decision['difference']['AR@100'])})")


def fmt(stat: dict) -> str:
    ci = stat.get("ci95")
    return f"{stat['value']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def write_dataset(project: Project, entry: dict) -> Path:
    """datasets/vNNN.json: the newest earlier version plus the round's accepted masks (pre-filled masks
    nobody reviewed are left out). Written once: a version that exists is kept as it is."""
    path = project.dataset_path(entry["index"])
    if path.exists():
        return path
    earlier = [p for p in sorted((project.root / "datasets").glob("v*.json")) if p.name < path.name]
    if not earlier:
        raise ProjectError(f"{project.root / 'datasets'} lost its versions (v000.json is written at init)")
    previous = read_json(earlier[-1], "a dataset version")
    names = {im["id"]: im["file_name"] for im in previous["images"]}
    categories = {c["id"]: c["name"] for c in previous["categories"]}
    masks, sizes = {}, {}
    for im in previous["images"]:
        sizes[im["file_name"]] = (im["height"], im["width"])
    for a in previous["annotations"]:
        masks.setdefault(names[a["image_id"]], []).append({"segmentation": a["segmentation"], "score": a.get("score", 1.0),
                                                           "label": categories.get(a["category_id"], "object")})
    labels_dir = project.round_dir(entry) / "labels" / "images"
    reviewed = unreviewed = 0
    for name in entry["images"]:
        saved = labels_dir / f"{image_key(name)}.json"
        if not saved.exists():
            continue
        state = read_json(saved, "a round's saved image")
        kept = [a for a in state["annotations"] if not a.get("prefill")]
        unreviewed += len(state["annotations"]) - len(kept)
        reviewed += len(kept)
        if kept or name in masks:  # a reviewed image's masks replace what an earlier version held
            masks[name] = [{"segmentation": a["segmentation"], "score": a.get("score", 1.0), "label": a["label"]} for a in kept]
            sizes[name] = (state["image"]["height"], state["image"]["width"])
    entry["masks"] = reviewed
    entry["unreviewed_prefill"] = unreviewed
    write_json(path, coco_file(masks, project.state["image_ids"], sizes))
    return path


def auto_ap(project: Project, entry: dict, truth_coco: dict, detections: Optional[dict] = None) -> dict:
    """COCOeval segm AP of the round's automatic masks against the ground truth of its images (one
    class: every mask an object). `detections` ({file name: [{segmentation, score}]}) scores other
    masks of the same images instead (bench/engine_stardist.py: the base model's, for comparison)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ..rle import rle_area
    from .project import image_key, masks_by_file

    # Crowd regions kept as COCOeval keeps them: they absorb detections, and are no object to find.
    truth, _ = masks_by_file(truth_coco, sorted(project.state["image_ids"]), "--truth", crowd=True)
    labels_dir = project.round_dir(entry) / "labels" / "images"
    names = [n for n in entry["images"] if n in truth and (labels_dir / f"{image_key(n)}.json").exists()]
    if not names:
        return {"images": 0}
    ids = project.state["image_ids"]
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    dt = []
    for name in names:
        state = read_json(labels_dir / f"{image_key(name)}.json", "a round's saved image")
        h, w = state["image"]["height"], state["image"]["width"]
        gt["images"].append({"id": ids[name], "file_name": name, "height": h, "width": w})
        for a in truth[name]:
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": ids[name], "category_id": 1,
                                      "segmentation": a["segmentation"], "iscrowd": a["iscrowd"],
                                      "area": float(rle_area(a["segmentation"]))})
        for a in (state["annotations"] if detections is None else detections.get(name, [])):
            dt.append({"image_id": ids[name], "category_id": 1, "segmentation": a["segmentation"], "score": a["score"]})
    objects = sum(1 for a in gt["annotations"] if not a["iscrowd"])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not dt:
            return {"images": len(names), "AP": 0.0, "AP50": 0.0, "AR@100": 0.0, "masks": 0, "truth": objects}
        coco_dt = coco_gt.loadRes(dt)
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    return {"images": len(names), "AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR@100": float(s[8]),
            "masks": len(dt), "truth": objects}

"""The three labelling stages of a round, over the round's annotation store.

- manual: the annotation page (grounded.annotate) on the round's images with the model in force;
  its ONNX graphs are exported for these weights (grounded.export.export_onnx keys its folder by
  the weights, so a fine-tuned decoder gets new graphs and an unchanged one reuses the old).
- semi: the model in force pre-fills the confident masks (automatic masks kept only above
  SEMI_SETTINGS' predicted-IoU and stability thresholds; or, with `--prefill text --categories`,
  the masks of named categories: detector + SAM, or SAM 3's concepts, text_prefill.py), saved as
  `prefill` annotations that the page shows apart; the annotator accepts, corrects or deletes them
  and adds what is missing.
- auto: automatic masks with the SAM paper's settings (AUTO_SETTINGS: a 32x32 grid, the three
  multimask outputs, predicted IoU >= 0.88, stability >= 0.95, box NMS at 0.7; `crops` adds the
  paper's zoomed-in crop layer), saved with no person involved.

With a ground-truth COCO (`truth`), the simulated annotator (annotator.py) labels manual and semi
rounds; the page is not opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .project import AUTO_SETTINGS, CROP_SETTINGS, SEMI_SETTINGS  # noqa: F401  (the stages' settings, named here)


def round_records(project, names: List[str]):
    from ..annotate.store import ImageRecord
    from .project import image_key

    ids = project.state["image_ids"]
    return [ImageRecord(key=image_key(n), path=project.data / n, file_name=n, image_id=ids[n]) for n in names]


def open_store(project, entry: dict, initial: Optional[Dict[str, List[dict]]] = None):
    from ..annotate.store import AnnotationStore

    records = [r for r in round_records(project, entry["images"]) if r.path.exists()]
    return AnnotationStore(project.round_dir(entry) / "labels", records, initial)


def load_model(spec: str):
    """The model in force: a SAM (grounded.sam), a SAM 2 / 2.1 (grounded.sam2), or a SAM 3
    (grounded.sam3: its tracker clicks, its concept model pre-fills text; no automatic masks, page or
    fine-tuning)."""
    from .text_prefill import is_sam3

    if is_sam3(spec):
        from ..sam3 import load_sam3

        return load_sam3(spec, device="cpu")
    from ..sam2 import load_sam_or_sam2

    return load_sam_or_sam2(spec)


def segmenter_for(model, label: str = "model", embeddings: Optional[dict] = None):
    """grounded eval's Segmenter over an in-memory SAM. Fine-tuning keeps the image encoder frozen, so
    the models of a round share it: `embeddings` ({encoder fingerprint: cache}) lets their predictors
    share one embedding cache, and an image is encoded once for all of them."""
    from ..eval.segmenters import GroundedSegmenter, weights_fingerprint
    from ..sam2 import predictor_for
    from ..sam3 import Sam3

    if isinstance(model, Sam3):  # SAM 3's tracker has SamPredictor's interface; its features are cached by Sam3
        return GroundedSegmenter(label, model.predictor(), weights_fingerprint(model.detector))
    predictor = predictor_for(model, cache_size=4)
    if embeddings is not None:
        predictor._cache = embeddings.setdefault(weights_fingerprint(model.image_encoder), predictor._cache)
    return GroundedSegmenter(label, predictor, weights_fingerprint(model))


def auto_masks(segmenter, image: np.ndarray, settings: dict) -> List[dict]:
    """Automatic masks (COCO RLE records with predicted_iou and stability_score)."""
    return segmenter.generate(image, settings)


def prefill(project, entry: dict, model, segmenter, log=print) -> Dict[str, List[dict]]:
    """The semi stage's pre-filled masks per image key, computed once and kept in the round folder
    (prefill.json) so that a resumed round shows the same ones: automatic masks kept above the
    project's semi settings, or (entry["prefill"] source "text", text_prefill.py) the masks of the
    named categories, labelled with their category."""
    import json

    from ..annotate.store import atomic_write
    from ..rle import rle_area, rle_to_bbox

    path = project.round_dir(entry) / "prefill.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    done: Dict[str, List[dict]] = json.loads(path.read_text()) if path.exists() else {}
    next_id = 1 + max((a["id"] for v in done.values() for a in v), default=0)
    todo = [r for r in round_records(project, entry["images"]) if r.key not in done and r.path.exists()]
    propose = proposer(project, entry, model, segmenter) if todo else None  # a finished pre-fill loads no detector
    for record in todo:
        image = read_image(entry, record, log)
        if image is None:
            continue
        masks = []
        for r in propose(image):
            masks.append({"id": next_id, "image_id": record.image_id, "label": r["label"], "segmentation": r["segmentation"],
                          "area": rle_area(r["segmentation"]), "bbox": rle_to_bbox(r["segmentation"]), "iscrowd": 0,
                          "score": r["score"], "prefill": True,
                          **({"detector_score": r["detector_score"]} if "detector_score" in r else {})})
            next_id += 1
        done[record.key] = masks
        atomic_write(path, json.dumps(done))  # image by image: a killed round keeps what is done
        log(f"  pre-filled {len(masks)} confident masks on {record.file_name}")
    entry["prefilled"] = sum(len(v) for v in done.values())
    return done


def proposer(project, entry: dict, model, segmenter):
    """image -> the pre-fill's masks ([{label, segmentation, score}]) by the round's recorded setting
    (a round begun before the setting existed pre-fills automatic masks)."""
    setting = entry.get("prefill") or {"source": "auto"}
    if setting["source"] == "text":
        from .text_prefill import text_proposer

        return text_proposer(setting, model, segmenter)
    settings = project.state["stage_settings"]["semi"]
    return lambda image: [{"label": "object", "segmentation": r["segmentation"], "score": float(r["predicted_iou"])}
                          for r in auto_masks(segmenter, image, settings)]


def truth_masks(truth_coco: Optional[dict], project) -> Dict[str, np.ndarray]:
    """Ground truth per image file name (N x H x W bool) from a COCO file."""
    from ..eval.masks import decode
    from .project import masks_by_file

    if truth_coco is None:
        return {}
    by_file, _ = masks_by_file(truth_coco, sorted(project.state["image_ids"]), "--truth")
    truths = {name: decode([a["segmentation"] for a in v]) for name, v in by_file.items()}
    # An image the truth lists with no object (or crowd regions only) holds nothing: its annotator
    # finds nothing, deletes every pre-filled mask, and goes on.
    for im in truth_coco["images"]:
        name = Path(im["file_name"]).name
        if name not in truths:
            truths[name] = np.zeros((0, int(im.get("height") or 0), int(im.get("width") or 0)), bool)
    return truths


def read_image(entry: dict, record, log=print) -> Optional[np.ndarray]:
    """A round's image, or None when the file cannot be read (a broken or truncated file among good
    ones): it is skipped and named in the round's entry ("unreadable": the status and the report list
    it), so that one bad file does not stop the round. A resumed round tries it again."""
    from ..io.image import ImageError, load_image

    try:
        image = load_image(record.path)
    except (ImageError, OSError) as err:
        entry.setdefault("unreadable", {})[record.file_name] = str(err)
        log(f"  {record.file_name}: skipped, cannot be read ({err})")
        return None
    entry.get("unreadable", {}).pop(record.file_name, None)
    return image


def label_simulated(project, entry: dict, store, segmenter, truths: Dict[str, np.ndarray], log=print) -> None:
    """Manual or semi stage by the simulated annotator, image by image (done images are skipped on resume)."""
    from .annotator import label_manual, label_semi

    done = set(entry.setdefault("labelled", []))
    for record in store.images:
        if record.file_name in done:
            continue
        if record.file_name not in truths:
            raise ValueError(f"--truth does not list {record.file_name}: the simulated annotator needs its objects "
                             "(list an image that holds none with no annotations)")
        image = read_image(entry, record, log)
        if image is None:
            continue
        record.height, record.width = image.shape[:2]
        if entry["stage"] == "manual":
            saved = label_manual(segmenter, store, record.key, image, truths[record.file_name])
            log(f"  {record.file_name}: {saved} masks by clicks")
        else:
            counts = label_semi(segmenter, store, record.key, image, truths[record.file_name])
            log(f"  {record.file_name}: pre-filled masks accepted {counts['accept']}, corrected {counts['correct']}, "
                f"deleted {counts['delete']}; {counts['add']} added by clicks")
        entry["labelled"].append(record.file_name)
        project.save()


def label_auto(project, entry: dict, store, segmenter, settings: dict, log=print) -> None:
    """Auto stage: automatic masks on every image of the round, image by image."""
    from ..rle import decode_rle

    done = set(entry.setdefault("labelled", []))
    for record in store.images:
        if record.file_name in done:
            continue
        image = read_image(entry, record, log)
        if image is None:
            continue
        record.height, record.width = image.shape[:2]
        records = auto_masks(segmenter, image, settings)
        state = store.get(record.key)
        # A resumed round may find this image half saved (killed between the write and the mark):
        # what the store holds of it is replaced, never doubled.
        for a in state["annotations"]:
            state["version"] = store.delete(record.key, state["version"], a["id"])["version"]
        masks = [decode_rle(r["segmentation"]) for r in records]
        logs = [{"clicks": [], "box": None, "num_clicks": 0, "seconds": None, "candidate": None,
                 "score": float(r["predicted_iou"]), "stability": float(r["stability_score"]), "automatic": True}
                for r in records]
        # Saved even when empty: the image was looked at, and found to hold nothing.
        store.add_many(record.key, state["version"], masks, "object", [r["predicted_iou"] for r in records], logs)
        log(f"  {record.file_name}: {len(records)} automatic masks")
        entry["labelled"].append(record.file_name)
        project.save()


def page_session(project, entry: dict, model, labels: Optional[List[str]] = None):
    """The annotation page's Session on the round's images with `model` (the model in force); its
    graphs are exported into PROJECT/onnx for these weights (new weights: new graphs)."""
    from ..annotate import model_embedder
    from ..annotate.server import Session
    from ..export import export_onnx
    from ..sam3 import Sam3

    if isinstance(model, Sam3):
        raise ValueError(f"the annotation page runs SAM 1 / SAM 2's ONNX graphs; the model in force {entry['model']} is "
                         "SAM 3: label its manual and semi rounds with the simulated annotator (--truth)")
    initial = None
    if entry["stage"] == "semi":
        initial = prefill(project, entry, model, segmenter_for(model))
    store = open_store(project, entry, initial)
    model_dir = export_onnx(model, Path(project.root) / "onnx", encoder=False)
    # A text pre-fill's categories are the page's labels unless --label names others.
    labels = labels or (entry.get("prefill") or {}).get("categories")
    return Session(store.images, store, model_dir, model_embedder(model), model.image_encoder.img_size, labels,
                   stage=entry["stage"])

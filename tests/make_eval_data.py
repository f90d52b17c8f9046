"""Synthetic evaluation data sets in every layout `grounded eval` reads, from coloured shapes
(grounded.testing.shapes), deterministic by seed:

    bin/python tests/make_eval_data.py OUT [--seed 0]

writes OUT/coco (instances.json + images/), OUT/coco/detections_jittered.json (the ground-truth boxes
moved by a seeded jitter, plus false positives: a detector's results file), OUT/lvis (lvis.json,
federated fields, images found through coco_url), OUT/labels (images/ + labels/ PNG) and
OUT/labels_tif (TIFF labels), OUT/sa1b, OUT/bsds (BSDS500 layout with .mat ground truth of two
annotators) and OUT/saco (three SA-Co/Gold annotator files with positive and negative phrases).
Categories are the shape kinds (circle, square, triangle); phrases are captions ("a red circle").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from grounded.eval.masks import encode, rle_areas, rle_boxes, seg_to_boundaries
from grounded.testing.shapes import SHAPES, all_captions, draw_scene

CATEGORIES = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]


def scenes(n: int = 6, seed: int = 0) -> list:
    """Scenes of 3-4 small/medium shapes (128 px), every third one a single large shape (256 px)."""
    rng = np.random.default_rng(seed)
    return [draw_scene(rng, 256, 1) if k % 3 == 2 else draw_scene(rng, 128, int(rng.integers(3, 5))) for k in range(n)]


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def coco_document(all_scenes, folder: Path, lvis: bool = False) -> dict:
    """A COCO (or LVIS-style) instances file for the scenes, images saved under folder/images."""
    images, annotations = [], []
    ann_id = 1
    for k, scene in enumerate(all_scenes, start=1):
        name = f"{k:012d}.png"
        _save(scene.image, folder / "images" / name)
        h, w = scene.image.shape[:2]
        entry = {"id": k, "height": h, "width": w}
        present = sorted({SHAPES.index(s) + 1 for s in scene.shapes})
        if lvis:
            entry["coco_url"] = f"http://images.example/val2017/{name}"
            entry["neg_category_ids"] = [c["id"] for c in CATEGORIES if c["id"] not in present][:1]
            entry["not_exhaustive_category_ids"] = present[:1] if k % 2 else []
        else:
            entry["file_name"] = name
        images.append(entry)
        rles = encode(scene.masks)
        for j, (rle, shape) in enumerate(zip(rles, scene.shapes)):
            seg = rle
            if j == 1 and not lvis:  # some uncompressed RLE, as COCO's crowd regions are stored
                seg = _uncompressed(scene.masks[j])
            annotations.append({"id": ann_id, "image_id": k, "category_id": SHAPES.index(shape) + 1, "segmentation": seg,
                                "area": float(rle_areas([rle])[0]), "bbox": rle_boxes([rle])[0].tolist(), "iscrowd": 0})
            ann_id += 1
    categories = [dict(c, frequency="rcf"[i % 3]) if lvis else dict(c) for i, c in enumerate(CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    if flat[0]:
        changes = np.concatenate([[0], changes])
    counts = np.diff(changes, prepend=0, append=flat.size)
    return {"size": list(mask.shape), "counts": counts.tolist()}


def jittered_detections(doc: dict, seed: int = 0, scale: float = 0.08) -> List[dict]:
    """Each ground-truth box moved and resized by up to `scale` of its size (seeded), a score drawn at
    random, and one false positive per image (a random box, low score)."""
    rng = np.random.default_rng(seed)
    sizes = {im["id"]: (im["width"], im["height"]) for im in doc["images"]}
    out = []
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0, scale, 4) * [w, h, w, h]
        width, height = sizes[ann["image_id"]]
        x0, y0 = np.clip([x + dx, y + dy], 0, [width - 2, height - 2])
        x1, y1 = np.clip([x + w + dx + dw, y + h + dy + dh], [x0 + 1, y0 + 1], [width, height])
        out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(rng.uniform(0.3, 1))})
    for im in doc["images"]:
        w, h = im["width"], im["height"]
        x0, y0 = rng.uniform(0, [w / 2, h / 2])
        out.append({"image_id": im["id"], "category_id": int(rng.integers(1, len(CATEGORIES) + 1)),
                    "bbox": [float(x0), float(y0), float(w / 4), float(h / 4)], "score": float(rng.uniform(0, 0.3))})
    return out


def write_coco(all_scenes, folder: Path, lvis: bool = False) -> Path:
    doc = coco_document(all_scenes, folder, lvis)
    path = folder / ("lvis.json" if lvis else "instances.json")
    path.write_text(json.dumps(doc))
    return path


def label_map(scene) -> np.ndarray:
    labels = np.zeros(scene.masks.shape[1:], np.uint16)
    for k, mask in enumerate(scene.masks, start=1):
        labels[mask] = k
    return labels


def write_labels(all_scenes, folder: Path, suffix: str = ".png") -> Path:
    import tifffile

    for k, scene in enumerate(all_scenes, start=1):
        _save(scene.image, folder / "images" / f"scene{k}.png")
        path = folder / "labels" / f"scene{k}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".png":
            Image.fromarray(label_map(scene)).save(path)
        else:
            tifffile.imwrite(path, label_map(scene))
    return folder


def write_sa1b(all_scenes, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, scene in enumerate(all_scenes, start=1):
        _save(scene.image, folder / f"sa_{k}.jpg")
        h, w = scene.image.shape[:2]
        rles = encode(scene.masks)
        anns = [{"id": 100 * k + j, "segmentation": rle, "area": int(rle_areas([rle])[0]), "bbox": rle_boxes([rle])[0].tolist(),
                 "predicted_iou": 0.9, "stability_score": 0.95, "point_coords": [[1.0, 1.0]], "crop_box": [0, 0, w, h]}
                for j, rle in enumerate(rles)]
        (folder / f"sa_{k}.json").write_text(json.dumps({"image": {"image_id": k, "width": w, "height": h,
                                                                  "file_name": f"sa_{k}.jpg"}, "annotations": anns}))
    return folder


def write_bsds(all_scenes, folder: Path, split: str = "test") -> Path:
    """BSDS500's layout: two annotators per image (the second merges the first shape into the background)."""
    from scipy.io import savemat

    root = folder / "BSDS500" / "data"
    for k, scene in enumerate(all_scenes, start=1):
        _save(scene.image, root / "images" / split / f"{k}.jpg")
        first = label_map(scene).astype(np.uint16) + 1
        second = first.copy()
        second[second == 2] = 1
        cells = np.empty((1, 2), dtype=object)
        for j, seg in enumerate((first, second)):
            cells[0, j] = {"Segmentation": seg, "Boundaries": seg_to_boundaries(seg).astype(np.uint8)}
        (root / "groundTruth" / split).mkdir(parents=True, exist_ok=True)
        savemat(str(root / "groundTruth" / split / f"{k}.mat"), {"groundTruth": cells})
    return folder


def write_saco(all_scenes, folder: Path) -> List[Path]:
    """Three annotator files: pairs for every shape's caption (positive) and two absent captions
    (negative); annotator b misses one instance, c marks one pair not exhaustive."""
    rng = np.random.default_rng(7)
    docs = [{"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]} for _ in range(3)]
    pair_id, ann_id = 1, 1
    for k, scene in enumerate(all_scenes, start=1):
        name = f"gold_{k}.png"
        _save(scene.image, folder / "images" / name)
        h, w = scene.image.shape[:2]
        absent = [c for c in all_captions() if c not in scene.captions]
        phrases = list(scene.captions) + [absent[i] for i in rng.choice(len(absent), 2, replace=False)]
        for phrase in phrases:
            masks = [m for m, c in zip(scene.masks, scene.captions) if c == phrase]
            for d, doc in enumerate(docs):
                doc["images"].append({"id": pair_id, "file_name": name, "height": h, "width": w, "text_input": phrase,
                                      "is_instance_exhaustive": not (d == 2 and pair_id % 5 == 0)})
                keep = masks if not (d == 1 and pair_id % 3 == 0) else masks[:-1]
                for rle in encode(np.stack(keep)) if keep else []:
                    doc["annotations"].append({"id": ann_id, "image_id": pair_id, "category_id": 1, "segmentation": rle,
                                               "area": float(rle_areas([rle])[0]), "bbox": rle_boxes([rle])[0].tolist(),
                                               "iscrowd": 0})
                    ann_id += 1
            pair_id += 1
    paths = []
    for d, doc in enumerate(docs):
        path = folder / f"gold_{'abc'[d]}.json"
        path.write_text(json.dumps(doc))
        paths.append(path)
    return paths


def write_all(out: Path, seed: int = 0, n: int = 6) -> dict:
    out = Path(out)
    s = scenes(n, seed)
    coco = write_coco(s, out / "coco")
    (out / "coco" / "detections_jittered.json").write_text(json.dumps(jittered_detections(json.loads(coco.read_text()), seed)))
    return {"coco": coco, "lvis": write_coco(s, out / "lvis", lvis=True), "labels": write_labels(s, out / "labels"),
            "labels_tif": write_labels(s, out / "labels_tif", ".tif"), "sa1b": write_sa1b(s, out / "sa1b"),
            "bsds": write_bsds(s, out / "bsds"), "saco": write_saco(s, out / "saco"),
            "detections": out / "coco" / "detections_jittered.json"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    for name, path in write_all(Path(args.out), args.seed, args.images).items():
        print(name, path)

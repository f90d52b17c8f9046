"""What the annotation server saves: one JSON file per image, written atomically on every change,
and a COCO file (RLE masks) of every image rebuilt from them, plus the per-mask log.

Files in the output folder:
- images/KEY.json: {"version": int, "image": {...}, "annotations": [COCO annotations of the image]};
  the version counts the image's changes, and a write that names another version is refused
  (`VersionConflict`, HTTP 409), so two tabs on one image never overwrite each other silently.
- coco.json: images, annotations (segmentation as compressed RLE, bbox, area, score) and categories.
- log.jsonl: one line per accepted mask, the schema in LOG_SCHEMA (`grounded engine` reads it).
Every write goes to a temporary file in the same folder and is renamed over the old one: a killed
server leaves the previous or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..rle import compress_rle, decode_rle, encode_rle, rle_area, rle_to_bbox

LOG_SCHEMA = {
    "image": "the image's key (its file stem, -2, -3 for repeats)",
    "file_name": "the image's path as given",
    "annotation_id": "the COCO annotation id the mask was saved under",
    "label": "the category name given at accept",
    "clicks": "[[x, y, label, ms]]: each point in image pixels, 1 foreground / 0 background, ms since the mask was started",
    "box": "[x0, y0, x1, y1] in image pixels, or null",
    "num_clicks": "points + (1 if a box)",
    "seconds": "from the mask's first prompt to accept",
    "candidate": "which decoder output was accepted (0 single-mask, 1-3 multimask)",
    "score": "the decoder's predicted IoU of the accepted mask",
    "corrects": "the annotation id this mask replaced (a correction), or null",
    "time": "UNIX time of the accept",
}
# Fields `grounded engine` adds to the lines it writes (the page's lines have LOG_SCHEMA's only).
ENGINE_LOG_FIELDS = {
    "confirmed": "true: a pre-filled mask (semi stage) accepted as it was, with no clicks",
    "simulated": "true: saved by the simulated annotator (seconds is null)",
    "automatic": "true: an automatic mask (auto stage); with its stability score in stability",
    "label_studio": "true: imported from a reviewed Label Studio task",
}


class VersionConflict(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"the image changed elsewhere (now version {current}); reload it")
        self.current = current


@dataclass
class ImageRecord:
    key: str
    path: Path
    file_name: str
    width: int = 0
    height: int = 0
    image_id: int = 0


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class AnnotationStore:
    def __init__(self, out_dir: Path, images: List[ImageRecord], initial: Optional[Dict[str, List[dict]]] = None) -> None:
        self.out_dir = Path(out_dir)
        self.images = images
        self.by_key = {record.key: record for record in images}
        (self.out_dir / "images").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._state: Dict[str, dict] = {}
        for record in images:
            saved = self._path(record.key)
            if saved.exists():
                self._state[record.key] = json.loads(saved.read_text())
            else:  # a COCO file opened for correction gives the image's first annotations
                self._state[record.key] = {"version": 0, "annotations": list((initial or {}).get(record.key, []))}
        self._next_id = 1 + max((a["id"] for s in self._state.values() for a in s["annotations"]), default=0)

    def _path(self, key: str) -> Path:
        return self.out_dir / "images" / f"{key}.json"

    def get(self, key: str) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._state[key]))

    def add(self, key: str, version: int, mask: np.ndarray, label: str, score: float, log: dict,
            replaces: Optional[int] = None) -> dict:
        """A mask accepted on image `key` at `version` (replacing annotation `replaces`): saved at once."""
        rle = encode_rle(mask)
        with self._lock:
            state = self._checked(key, version)
            annotations = [a for a in state["annotations"] if a["id"] != replaces]
            if replaces is not None and len(annotations) == len(state["annotations"]):
                raise KeyError(f"image {key} has no annotation {replaces}")
            record = self.by_key[key]
            annotation = {"id": self._next_id, "image_id": record.image_id, "label": label,
                          "segmentation": compress_rle(rle), "area": rle_area(rle), "bbox": rle_to_bbox(rle),
                          "iscrowd": 0, "score": float(score)}
            self._next_id += 1
            annotations.append(annotation)
            self._commit(key, annotations)
            entry = {"image": key, "file_name": record.file_name, "annotation_id": annotation["id"], "label": label,
                     "corrects": replaces, "time": time.time(), **log}
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            return {"version": self._state[key]["version"], "annotation": annotation}

    def add_many(self, key: str, version: int, masks: np.ndarray, label: str, scores, logs: List[dict]) -> dict:
        """Several masks saved on image `key` in one write (the engine's automatic stage and simulated
        annotator); one log line each."""
        rles = [encode_rle(m) for m in masks]
        with self._lock:
            state = self._checked(key, version)
            record = self.by_key[key]
            annotations = list(state["annotations"])
            lines = []
            for rle, score, log in zip(rles, scores, logs):
                annotation = {"id": self._next_id, "image_id": record.image_id, "label": label,
                              "segmentation": compress_rle(rle), "area": rle_area(rle), "bbox": rle_to_bbox(rle),
                              "iscrowd": 0, "score": float(score)}
                self._next_id += 1
                annotations.append(annotation)
                lines.append({"image": key, "file_name": record.file_name, "annotation_id": annotation["id"],
                              "label": label, "corrects": None, "time": time.time(), **log})
            self._commit(key, annotations)
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write("".join(json.dumps(line) + "\n" for line in lines))
            return {"version": self._state[key]["version"]}

    def confirm(self, key: str, version: int, annotation_id: int, label: Optional[str] = None,
                seconds: Optional[float] = None) -> dict:
        """A pre-filled mask (the engine's semi-automatic stage) accepted as it is: it stops being a
        proposal, and the log records it with no clicks."""
        with self._lock:
            state = self._checked(key, version)
            found = [a for a in state["annotations"] if a["id"] == annotation_id]
            if not found:
                raise KeyError(f"image {key} has no annotation {annotation_id}")
            if not found[0].get("prefill"):
                raise ValueError(f"annotation {annotation_id} of image {key} is not a pre-filled mask")
            label = label or found[0]["label"]
            annotations = [{k: v for k, v in a.items() if k != "prefill"} | {"label": label}
                           if a["id"] == annotation_id else a for a in state["annotations"]]
            self._commit(key, annotations)
            record = self.by_key[key]
            entry = {"image": key, "file_name": record.file_name, "annotation_id": annotation_id, "label": label,
                     "corrects": None, "time": time.time(), "clicks": [], "box": None, "num_clicks": 0,
                     "seconds": seconds, "candidate": None, "score": found[0].get("score", 0.0), "confirmed": True}
            with open(self.out_dir / "log.jsonl", "a") as handle:
                handle.write(json.dumps(entry) + "\n")
            return {"version": self._state[key]["version"]}

    def delete(self, key: str, version: int, annotation_id: int) -> dict:
        with self._lock:
            state = self._checked(key, version)
            kept = [a for a in state["annotations"] if a["id"] != annotation_id]
            if len(kept) == len(state["annotations"]):
                raise KeyError(f"image {key} has no annotation {annotation_id}")
            self._commit(key, kept)
            return {"version": self._state[key]["version"]}

    def clear(self, key: str, version: int) -> dict:
        """Every annotation of image `key` removed in one write: a review that found nothing on it (its
        saved state then says so, where a never-saved image says nothing)."""
        with self._lock:
            self._checked(key, version)
            self._commit(key, [])
            return {"version": self._state[key]["version"]}

    def relabel(self, key: str, version: int, annotation_id: int, label: str) -> dict:
        with self._lock:
            state = self._checked(key, version)
            found = [a for a in state["annotations"] if a["id"] == annotation_id]
            if not found:
                raise KeyError(f"image {key} has no annotation {annotation_id}")
            annotations = [dict(a, label=label) if a["id"] == annotation_id else a for a in state["annotations"]]
            self._commit(key, annotations)
            return {"version": self._state[key]["version"]}

    def _checked(self, key: str, version: int) -> dict:
        state = self._state[key]
        if int(version) != state["version"]:
            raise VersionConflict(state["version"])
        return state

    def _commit(self, key: str, annotations: List[dict]) -> None:
        record = self.by_key[key]
        state = {"version": self._state[key]["version"] + 1, "annotations": annotations,
                 "image": {"id": record.image_id, "file_name": record.file_name, "width": record.width,
                           "height": record.height}}
        atomic_write(self._path(key), json.dumps(state))
        self._state[key] = state
        self._write_coco()

    def _write_coco(self) -> None:
        labels = sorted({a["label"] for s in self._state.values() for a in s["annotations"]})
        category = {name: i + 1 for i, name in enumerate(labels)}
        images, annotations = [], []
        for record in self.images:
            images.append({"id": record.image_id, "file_name": record.file_name, "width": record.width,
                           "height": record.height})
            for a in self._state[record.key]["annotations"]:
                annotations.append({k: v for k, v in a.items() if k != "label"} | {"category_id": category[a["label"]]})
        coco = {"images": images, "annotations": annotations,
                "categories": [{"id": i, "name": name} for name, i in category.items()]}
        atomic_write(self.out_dir / "coco.json", json.dumps(coco))


def coco_annotations(coco: dict, file_to_key: Dict[str, str]) -> Dict[str, List[dict]]:
    """A COCO file's annotations per image key, labelled by category name (RLE or polygons -> RLE)."""
    names = {c["id"]: c.get("name", str(c["id"])) for c in coco.get("categories", [])}
    images = {im["id"]: im for im in coco.get("images", [])}
    out: Dict[str, List[dict]] = {}
    for a in coco.get("annotations", []):
        image = images.get(a.get("image_id"))
        key = file_to_key.get(image["file_name"]) if image else None
        if key is None or not isinstance(a.get("segmentation"), dict):
            continue  # polygon masks are not opened for correction
        rle = compress_rle(a["segmentation"])
        mask_rle = encode_rle(decode_rle(rle))
        out.setdefault(key, []).append({
            "id": int(a["id"]), "image_id": image["id"], "label": names.get(a.get("category_id"), "object"),
            "segmentation": rle, "area": rle_area(mask_rle), "bbox": rle_to_bbox(mask_rle), "iscrowd": 0,
            "score": float(a.get("score", 1.0)),
        })
    return out

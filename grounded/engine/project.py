"""The project folder of `grounded engine`: what it holds, its version, its lock.

    PROJECT/project.json        format + version, the data folder, image ids, the held-out split, the
                                model in force, the training settings, one entry per round
    PROJECT/heldout.json        the held-out split's masks (COCO, RLE): never trained on
    PROJECT/datasets/vNNN.json  everything labelled after round NNN (COCO, RLE; v000: the masks given
                                at init); a version is written once and never changed
    PROJECT/models/vNNN/        the fine-tuned SAM kept after round NNN (save_pretrained layout)
    PROJECT/rounds/NNN-STAGE/   the round's work: labels/ (the annotation store: images/*.json,
                                coco.json, log.jsonl), prefill.json (semi), train/seed_K/, eval/
    PROJECT/report.md, report_*.png
    PROJECT/.lock               held (flock) by the process running a round

Every JSON file is written to a temporary file and renamed over the old one, so a killed process
leaves the old or the new file, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

FORMAT = "grounded-engine-project"
VERSION = 1
STAGES = ("manual", "semi", "auto")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ProjectError(ValueError):
    """A project folder that cannot be used as it is (the message names the file)."""


class ProjectBusy(RuntimeError):
    """Another process holds the project's lock (a round is running)."""


def write_json(path: Path, value) -> None:
    from ..annotate.store import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(value, indent=1))


def read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        if what.startswith(("the --", "the Label")):  # a file the user named, not one of the project's own
            raise ProjectError(f"{path} does not exist ({what})") from None
        raise ProjectError(f"{path} is missing: not a grounded engine project, or {what} was removed") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ProjectError(f"{path} is corrupted ({what} is not valid JSON: {err})") from None
    except OSError as err:  # a folder, a file we may not read: named, not a traceback
        raise ProjectError(f"{path} cannot be read as {what} ({err.strerror or err})") from None


def image_files(folder: Path) -> List[str]:
    """The images of a data folder (not its subfolders), by name, sorted. Hidden files are left out:
    macOS writes `._NAME.png` resource forks beside copied images, which are no images."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def image_key(file_name: str) -> str:
    """The file-system-safe key of an image's saved labels. A name that needs changing gets a hash of
    itself appended: "x?y.png" and "x_y.png", or two names in a non-Latin script, must not share one
    label file. The hash goes after the name, so a key never equals another image's plain name."""
    key = re.sub(r"[^A-Za-z0-9._-]", "_", file_name)
    if key == file_name and not key.startswith("."):
        return key
    import hashlib

    return f"{key.lstrip('.') or 'image'}-{hashlib.sha1(file_name.encode()).hexdigest()[:10]}"


class Project:
    def __init__(self, root: Path, state: dict) -> None:
        self.root = Path(root)
        self.state = state
        self._lock_handle = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, root) -> "Project":
        root = Path(root)
        if root.is_file():
            raise ProjectError(f"{root} is a file: name the project's folder ({root.parent})")
        if not root.is_dir():
            raise FileNotFoundError(f"no project folder {root}")
        path = root / "project.json"
        state = read_json(path, "the project file")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ProjectError(f"{path} is not a grounded engine project file (format {state.get('format') if isinstance(state, dict) else None!r})")
        if state.get("version") != VERSION:
            raise ProjectError(f"{path} is a version {state.get('version')!r} project; this grounded reads version "
                               f"{VERSION} (made by another grounded version: use that one, or start a new project)")
        for key in ("data", "image_ids", "heldout", "model", "rounds", "train", "stage_settings"):
            if key not in state:
                raise ProjectError(f"{path} is corrupted: it lacks {key!r}")
        check_state(state, path)
        return cls(root, state)

    def save(self) -> None:
        write_json(self.root / "project.json", self.state)

    # ------------------------------------------------------------------ lock

    def lock(self) -> "Project":
        """Hold the project for one round; ProjectBusy when another process holds it. The lock is the
        kernel's (flock): a killed process releases it, so a killed round can be resumed at once."""
        handle = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise ProjectBusy(f"a round is already running on {self.root} ({holder or 'another process'}); "
                              "wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._lock_handle = handle
        return self

    def unlock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> "Project":
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()

    # ------------------------------------------------------------------ contents

    @property
    def data(self) -> Path:
        return Path(self.state["data"])

    @property
    def rounds(self) -> List[dict]:
        return self.state["rounds"]

    def scan(self) -> Dict[str, List[str]]:
        """The data folder now, against what the project knew: new images get ids (they join the
        unlabelled pool); images gone are reported and left out of training (their masks stay in the
        dataset versions that hold them)."""
        if not self.data.is_dir():
            raise FileNotFoundError(f"the project's data folder {self.data} is gone (named in {self.root / 'project.json'})")
        present = image_files(self.data)
        ids = self.state["image_ids"]
        added = [f for f in present if f not in ids]
        for name in added:
            ids[name] = max(ids.values(), default=0) + 1
        removed = sorted(set(ids) - set(present))
        return {"present": present, "added": added, "removed": removed}

    def heldout_names(self) -> List[str]:
        return list(self.state["heldout"]["images"])

    def labelled_names(self) -> List[str]:
        """Images some accepted round (or the init masks) labelled, in the newest dataset version."""
        version = self.latest_dataset()
        if version is None:
            return []
        coco = read_json(version, "a dataset version")
        return sorted({im["file_name"] for im in coco["images"]})

    def taken_names(self) -> List[str]:
        """Images that some round took (labelled, or being labelled by an unfinished round)."""
        names = set(self.labelled_names())
        for entry in self.rounds:
            # A finished round's unreadable images were never labelled: they go back to the pool, so that
            # a file mended since is labelled by a later round.
            skipped = entry.get("unreadable", {}) if entry["status"] == "done" else {}
            names.update(n for n in entry["images"] if n not in skipped)
        return sorted(names)

    def pool(self, present: List[str]) -> List[str]:
        """Images no round has taken and that are not held out."""
        taken = set(self.taken_names()) | set(self.heldout_names())
        return [f for f in present if f not in taken]

    def dataset_path(self, version: int) -> Path:
        return self.root / "datasets" / f"v{version:03d}.json"

    def latest_dataset(self) -> Optional[Path]:
        found = sorted((self.root / "datasets").glob("v*.json"))
        return found[-1] if found else None

    def round_dir(self, entry: dict) -> Path:
        return self.root / "rounds" / f"{entry['index']:03d}-{entry['stage']}"

    def model_spec(self) -> str:
        """What grounded.sam2.load_sam_or_sam2 loads for the model in force (a project folder or a name)."""
        current = self.state["model"]["current"]
        path = self.root / current
        return str(path) if current.startswith("models/") else current

    def unfinished(self) -> Optional[dict]:
        return next((r for r in self.rounds if r["status"] != "done"), None)


def check_state(state: dict, path: Path) -> None:
    """The shape of a project file edited by hand: a wrong type is named here, not met as a traceback
    later."""
    def bad(what: str, want: str):
        raise ProjectError(f"{path} is corrupted: {what} should be {want}")

    if not isinstance(state["data"], str):
        bad("'data'", "the data folder's path")
    ids = state["image_ids"]
    if not isinstance(ids, dict) or not all(isinstance(v, int) for v in ids.values()):
        bad("'image_ids'", "{file name: id}")
    heldout = state["heldout"]
    if not isinstance(heldout, dict) or not isinstance(heldout.get("images"), list) or not isinstance(heldout.get("coco"), str):
        bad("'heldout'", '{"images": [file names], "coco": "heldout.json"}')
    model = state["model"]
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("base", "current")):
        bad("'model'", '{"base": ..., "current": ...}')
    for key in ("train", "stage_settings"):
        if not isinstance(state[key], dict):
            bad(repr(key), "an object")
    if not isinstance(state["rounds"], list):
        bad("'rounds'", "a list")
    wanted = {"index": (int, "an integer"), "stage": (str, "a string"), "images": (list, "a list"),
              "status": (str, "a string")}
    for i, entry in enumerate(state["rounds"]):
        if not isinstance(entry, dict):
            bad(f"round entry {i + 1}", "an object")
        for key, (kind, said) in wanted.items():
            if not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool):
                bad(f"round entry {i + 1}'s {key!r}", said)


def check_out_folder(out: Path, data: Path) -> None:
    """A project's folder must be new or empty, and not the data folder."""
    if out.exists() and not out.is_dir():
        raise ProjectError(f"--out {out} is a file; the project needs a folder (new, or empty)")
    if out.resolve() == data:
        # The project writes report_*.png into its folder, which would then join the images.
        raise ProjectError(f"--out {out} is the data folder itself; give the project a folder of its own "
                           "(a subfolder of the data folder will do)")
    if (out / "project.json").exists():
        raise ProjectError(f"{out / 'project.json'} exists: {out} is a project already (grounded engine status {out})")
    left = [name for name in ("datasets", "rounds", "models", "heldout.json") if (out / name).exists()]
    if left:  # an earlier project's versions would be taken for this one's (the newest dataset is read)
        raise ProjectError(f"--out {out} holds {', '.join(left)} of an earlier project; give the project a new or empty folder")


def checked_train_settings(train: Optional[dict], stage_settings: Optional[dict]) -> dict:
    """The fine-tuning settings with their defaults. Checked at init: they are kept in project.json, and a
    round that met them at its training step could not go on (a resumed round reads the same settings)."""
    settings = dict(DEFAULT_TRAIN, **(train or {}))
    if len(settings["seeds"]) < 3:
        raise ValueError(f"the acceptance rule needs at least 3 fine-tuning seeds, got {settings['seeds']}")
    if len(set(settings["seeds"])) != len(settings["seeds"]):
        raise ValueError(f"the fine-tuning seeds must differ (the same seed trains the same model): {settings['seeds']}")
    if int(settings["steps"]) < 1:
        raise ValueError(f"--steps is the fine-tuning steps per seed: at least 1, got {settings['steps']}")
    for given in (stage_settings or {}).values():
        if "points_per_side" in given and int(given["points_per_side"]) < 1:
            raise ValueError(f"--points-per-side is the automatic masks' grid: at least 1, got {given['points_per_side']}")
    return settings


def init_project(data, out, coco: Optional[str] = None, heldout: Optional[List[str]] = None,
                 heldout_fraction: float = 0.0, model: str = "mobile_sam", train: Optional[dict] = None,
                 seed: int = 0, stage_settings: Optional[dict] = None) -> Project:
    """A new project over the images of `data`: `coco` gives masks some images already have (they
    are dataset v000, except the held-out ones); the held-out split is `heldout` (file names) or a
    seeded `heldout_fraction` of the images with masks; its masks are heldout.json."""
    import numpy as np

    data, out = Path(data).expanduser().resolve(), Path(out).expanduser()
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder {data}")
    check_out_folder(out, data)
    if not 0 <= heldout_fraction <= 1:
        raise ValueError(f"--heldout-fraction is a fraction of the images with masks, from 0 to 1; got {heldout_fraction}")
    names = image_files(data)
    if not names:
        raise ValueError(f"no images in {data} (looked for {', '.join(IMAGE_SUFFIXES)})")
    ids = {name: i + 1 for i, name in enumerate(names)}
    annotations: Dict[str, List[dict]] = {}
    categories = [{"id": 1, "name": "object"}]
    from ..io.image import load_image

    sizes: Dict[str, tuple] = {}

    def image_size(name: str) -> tuple:
        if name not in sizes:
            sizes[name] = load_image(data / name).shape[:2]  # also finds an unreadable image now, named
        return sizes[name]

    if coco:
        given = read_json(Path(coco), "the --coco file")
        annotations, categories = masks_by_file(given, names, coco, image_size)
    heldout = list(heldout or [])
    unknown = [h for h in heldout if h not in ids]
    if unknown:
        raise ValueError(f"held-out images {unknown} are not in {data}")
    if not heldout and heldout_fraction > 0:
        with_masks = sorted(annotations)
        count = max(1, round(heldout_fraction * len(with_masks))) if with_masks else 0
        heldout = sorted(np.random.default_rng(seed).choice(with_masks, count, replace=False).tolist()) if count else []
    missing = [h for h in heldout if not annotations.get(h)]
    if missing:
        raise ValueError(f"held-out images need masks (from --coco) to evaluate on: {missing} have none")
    settings = checked_train_settings(train, stage_settings)
    out.mkdir(parents=True, exist_ok=True)
    project = Project(out, {
        "format": FORMAT, "version": VERSION, "data": str(data), "image_ids": ids,
        "heldout": {"images": heldout, "coco": "heldout.json"},
        "model": {"base": str(model), "current": str(model)},
        "train": settings, "rounds": [], "created": time.time(),
        "stage_settings": {"semi": dict(SEMI_SETTINGS, **(stage_settings or {}).get("semi", {})),
                           "auto": dict(AUTO_SETTINGS, **(stage_settings or {}).get("auto", {}))},
    })
    for name in set(annotations) | set(heldout):
        image_size(name)
    write_json(out / "heldout.json", coco_file({h: annotations[h] for h in heldout}, ids, sizes, categories))
    write_json(project.dataset_path(0), coco_file({k: v for k, v in annotations.items() if k not in heldout}, ids, sizes,
                                                  categories))
    project.save()
    return project


# The automatic-mask settings of the stages (stages.py): auto, the SAM paper's; semi, stricter (confident
# masks only); the crop layer that auto --crops adds.
AUTO_SETTINGS = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95,
                 "box_nms_thresh": 0.7}
CROP_SETTINGS = {"crop_n_layers": 1, "crop_n_points_downscale_factor": 2, "crop_nms_thresh": 0.7}
SEMI_SETTINGS = {"points_per_side": 32, "pred_iou_thresh": 0.92, "stability_score_thresh": 0.95,
                 "box_nms_thresh": 0.7}
# The semi stage's text-grounded pre-fill (text_prefill.py): per named category, Grounding DINO's boxes
# (its defaults elsewhere in grounded: box 0.3, text 0.25, shortest side 800) prompt the round's SAM, a
# mask kept at predicted IoU >= 0.88 (the SAM paper's threshold for automatic masks); a SAM 3 model in
# force keeps an instance at score >= 0.5 (grounded.sam3's default).
TEXT_PREFILL = {"detector": "IDEA-Research/grounding-dino-tiny", "box_threshold": 0.3, "text_threshold": 0.25,
                "pred_iou_thresh": 0.88, "detector_size": 800, "sam3_threshold": 0.5}

# Fine-tuning between rounds (bench/finetune_stardist.py's recipe): the mask heads (output
# hypernetworks) train, the encoder's embeddings are cached. The IoU head stays the base model's: the
# automatic stages select masks by its predicted IoU at the SAM paper's thresholds (0.88, semi 0.92),
# which are tuned to that head's scale, and 20 steps on a few dozen masks moved the scale, not the
# ranking (stardist proof, issue 27: true IoU of the grid points' first output 0.85 -> 0.87, predicted
# 0.97 -> 0.78, so no automatic mask passed 0.88 and AR@100 fell from 0.634 to 0.000). With the
# transformer and IoU head frozen, every prompt's predicted IoU is exactly the base model's.
DEFAULT_TRAIN = {
    "steps": 20, "lr": 3e-4, "max_masks": 16, "seeds": [0, 1, 2],
    "trainable": ["mask_decoder.output_hypernetworks_mlps"],
    "interactive": {"point_rounds": 0, "no_point_rounds": 0, "box_prob": 0.0},
    "clicks": 20, "bootstrap": 1000,
}


def masks_by_file(coco: dict, names: List[str], where: str, image_size: Optional[Callable[[str], tuple]] = None,
                  crowd: bool = False):
    """A COCO file's masks per image file name (RLE or polygons, as COCO RLE), labelled by category.
    Crowd annotations (iscrowd=1) mark regions, not objects: left out, as grounded's trainer and eval
    leave them out, unless `crowd` (then each mask says "iscrowd"). `image_size(file name)` gives the
    file's (height, width): an image entry without a size takes the file's, one that disagrees with
    the file is refused (its masks would not fit the pixels)."""
    from ..eval.masks import to_rle

    def bad(message: str):
        raise ProjectError(f"{where}: {message}")

    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(coco.get("annotations"), list):
        bad("not a COCO file (it needs lists of images and annotations)")
    known = set(names)
    cats = {c.get("id"): c.get("name", str(c.get("id"))) for c in coco.get("categories") or [] if isinstance(c, dict)}
    images, by_name = {}, {}
    for im in coco["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or "id" not in im:
            bad(f"image entry {str(im)[:80]} needs an id and a file_name")
        # The data folder is flat: a COCO file's own folders ("train/a.png") are dropped.
        name = Path(im["file_name"]).name
        if name not in known:
            bad(f"image {im['file_name']!r} is not in the data folder")
        if name in by_name:
            bad(f"image {name!r} is listed twice" if by_name[name] == im["file_name"] else
                f"images {by_name[name]!r} and {im['file_name']!r} are both {name} in the data folder")
        by_name[name] = im["file_name"]
        try:
            h, w = (int(im["height"]), int(im["width"])) if "height" in im or "width" in im else (None, None)
        except (KeyError, TypeError, ValueError):
            bad(f"image {im['file_name']!r} has no valid height and width")
        if image_size is not None:
            actual = tuple(int(v) for v in image_size(name))
            if h is not None and (h, w) != actual:
                bad(f"image {im['file_name']!r} is {w}x{h} there, but the file is {actual[1]}x{actual[0]} (width x height): "
                    "its masks would not fit")
            h, w = actual
        elif h is None:
            bad(f"image {im['file_name']!r} has no height and width")
        images[im["id"]] = (name, h, w)
    out: Dict[str, List[dict]] = {}
    for a in coco["annotations"]:
        if not isinstance(a, dict):
            bad(f"annotation {str(a)[:80]} is not an object")
        if a.get("image_id") not in images:
            bad(f"annotation {a.get('id')} names image {a.get('image_id')}, which the file lacks")
        if a.get("iscrowd") and not crowd:
            continue
        name, h, w = images[a["image_id"]]
        if "segmentation" not in a:
            bad(f"annotation {a.get('id')} of {name} has no segmentation (the engine needs masks, not only boxes)")
        try:
            rle = to_rle(a["segmentation"], h, w)
        except (ValueError, TypeError, IndexError, KeyError) as err:
            bad(f"annotation {a.get('id')} of {name}: {err}")
        if tuple(rle["size"]) != (h, w):
            bad(f"annotation {a.get('id')} of {name} is a {rle['size'][1]}x{rle['size'][0]} mask on a {w}x{h} image")
        out.setdefault(name, []).append({"segmentation": rle, "label": cats.get(a.get("category_id"), "object"),
                                         "score": float(a.get("score", 1.0)),
                                         **({"iscrowd": 1 if a.get("iscrowd") else 0} if crowd else {})})
    labels = sorted({a["label"] for v in out.values() for a in v}) or ["object"]
    return out, [{"id": i + 1, "name": n} for i, n in enumerate(labels)]


def coco_file(masks: Dict[str, List[dict]], ids: Dict[str, int], sizes: Dict[str, tuple],
              categories: Optional[List[dict]] = None) -> dict:
    """{file name: [{segmentation (RLE), label, score, ...}]} -> a COCO dict (areas and boxes from the RLE)."""
    from ..rle import rle_area, rle_to_bbox

    labels = sorted({a["label"] for v in masks.values() for a in v} | {c["name"] for c in categories or []}) or ["object"]
    category = {n: i + 1 for i, n in enumerate(labels)}
    images, annotations = [], []
    for name in sorted(masks):
        h, w = sizes[name]
        images.append({"id": ids[name], "file_name": name, "height": int(h), "width": int(w)})
        for a in masks[name]:
            rle = a["segmentation"]
            annotations.append({"id": len(annotations) + 1, "image_id": ids[name], "category_id": category[a["label"]],
                                "segmentation": a["segmentation"], "area": rle_area(rle), "bbox": rle_to_bbox(rle),
                                "iscrowd": 0, "score": float(a.get("score", 1.0))})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in category.items()]}

"""Evaluation data sets: one in-memory form for every layout `grounded eval` reads.

- COCO JSON (`instances_*.json` and images), LVIS JSON (federated: `neg_category_ids`,
  `not_exhaustive_category_ids`, category `frequency`);
- SA-1B folders (`sa_N.jpg` beside `sa_N.json`), class-agnostic;
- instance-label folders: `images/` beside `labels/` (or `masks/`), PNG or TIFF label maps matched by
  file stem, 0 = background, every other value one instance;
- BSDS500 (`images/<split>/*.jpg`, `groundTruth/<split>/*.mat`, read with scipy): every annotator's
  boundaries, and the first annotator's segments as instances;
- SA-Co/Gold JSON (one file per annotator): image-phrase pairs (`text_input`), their masks, and
  `is_instance_exhaustive`.

What cannot be used is counted in `Dataset.skipped` with examples, never fatal on its own: images
whose file is missing, annotations of unknown images or categories, empty masks, zero-area boxes and
crowd regions (never prompted; COCO-style AP/AR keep them as regions that absorb detections, as
COCOeval does). A path that does not exist, holds no images, or a category filter that matches
nothing is an error that says so.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .masks import encode, rle_areas, rle_boxes, seg_to_boundaries, to_rle

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
FORMATS = ("coco", "lvis", "sa1b", "labels", "bsds", "saco")
AGNOSTIC = {1: {"name": "object"}}
LABEL_CHUNK = 64  # instances of a label map turned into RLEs at once


class DatasetError(ValueError):
    """A data set that cannot be read at all; the message says what was expected."""


@dataclass
class Instance:
    id: int
    rle: dict
    category_id: int
    area: float
    bbox: tuple  # x, y, w, h
    crowd: bool = False
    ignore: bool = False


@dataclass
class Pair:
    """An image-phrase pair of the text task: one list of instances per annotator."""

    id: int
    phrase: str
    exhaustive: bool
    annotations: List[List[Instance]]


@dataclass
class EvalImage:
    id: int
    name: str
    path: Path
    height: Optional[int] = None
    width: Optional[int] = None
    instances: List[Instance] = field(default_factory=list)
    pairs: List[Pair] = field(default_factory=list)
    neg_category_ids: Sequence[int] = ()
    not_exhaustive_category_ids: Sequence[int] = ()
    boundary_file: Optional[Path] = None  # BSDS ground truth

    @property
    def prompts(self) -> List[Instance]:
        """The instances a prompt task prompts: every one but crowd regions."""
        return [i for i in self.instances if not i.crowd]


@dataclass
class Dataset:
    format: str
    source: str
    images: List[EvalImage]
    categories: Dict[int, dict]
    skipped: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def name(self) -> str:
        """A short name for titles: the data set's file or folder name."""
        first = Path(self.source.split(", ")[0])
        return first.name if first.name not in ("data", "") else first.parent.name

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(example)

    def category_id(self, name: str) -> Optional[int]:
        return next((k for k, c in self.categories.items() if c["name"] == name), None)

    def boundaries(self, image: EvalImage) -> List[np.ndarray]:
        """The human boundary maps of an image: BSDS's annotators as drawn, else the instance masks'
        contours thinned to one pixel (as an edge map is before it is matched)."""
        if image.boundary_file is not None:
            return [b for _, b in read_bsds_truth(image.boundary_file)]
        from .boundaries import thin
        from .masks import decode

        labels = np.zeros((image.height, image.width), np.int32)
        kept = [i for i in image.instances if not i.crowd]
        for k, mask in enumerate(decode([i.rle for i in kept]) if kept else [], start=1):
            labels[mask] = k
        return [thin(seg_to_boundaries(labels))]

    def summary(self) -> dict:
        return {"format": self.format, "source": self.source, "images": len(self.images),
                "instances": sum(len(i.instances) for i in self.images),
                "pairs": sum(len(i.pairs) for i in self.images),
                "categories": len(self.categories),
                "skipped": {k: {"count": v, "examples": self.examples[k]} for k, v in self.skipped.items()}}


# ---- format detection ---------------------------------------------------------------------------

def detect_format(paths: Sequence[Path]) -> str:
    if len(paths) > 1:
        if not all(p.suffix == ".json" for p in paths):
            raise DatasetError("several --data paths are SA-Co/Gold annotation files (one per annotator); "
                               f"got {', '.join(map(str, paths))}")
        return "saco"
    path = paths[0]
    if path.is_file():
        if path.suffix != ".json":
            raise DatasetError(f"{path} is not a data set: give a COCO/LVIS/SA-Co JSON file or a folder")
        doc = _read_json(path)
        if isinstance(doc, dict) and "image" in doc and "annotations" in doc:
            return "sa1b"
        images = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(images, list):
            raise DatasetError(f"{path} has no 'images' list: not a COCO, LVIS or SA-Co/Gold file")
        if any("text_input" in im for im in images[:50]):
            return "saco"
        if any("neg_category_ids" in im or "not_exhaustive_category_ids" in im for im in images[:50]):
            return "lvis"
        return "coco"
    if _bsds_root(path) is not None:
        return "bsds"
    if (path / "images").is_dir() and any((path / d).is_dir() for d in ("labels", "masks")):
        return "labels"
    if any(_is_sa1b_json(p) for p in sorted(path.glob("*.json"))[:3]):
        return "sa1b"
    raise DatasetError(
        f"cannot tell what kind of data set {path} is. Expected a COCO/LVIS/SA-Co JSON file, a folder with "
        "images/ and labels/ (instance-label PNG/TIFF), a BSDS500 folder (images/ and groundTruth/), or an "
        "SA-1B folder (sa_N.jpg beside sa_N.json)")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DatasetError(f"cannot read {path} as JSON: {err}") from None


def _is_sa1b_json(path: Path) -> bool:
    from ..sam.training.data import is_sa1b_json

    try:
        return is_sa1b_json(path)
    except OSError:
        return False


# ---- loading ------------------------------------------------------------------------------------

@dataclass
class Selection:
    """Which part of a data set to use: --limit, --subset (seeded) and --categories."""

    limit: Optional[int] = None
    subset: Optional[int] = None
    seed: int = 0
    categories: Optional[Sequence[str]] = None
    split: str = "test"

    def pick(self, items: list) -> list:
        for name in ("limit", "subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DatasetError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.subset is not None and self.subset < len(items):
            idx = np.sort(np.random.default_rng(self.seed).choice(len(items), self.subset, replace=False))
            items = [items[i] for i in idx]
        if self.limit is not None:
            items = items[: self.limit]
        return items


def load_dataset(paths: Sequence[str], images_dir: Optional[str] = None, format: Optional[str] = None,
                 selection: Optional[Selection] = None) -> Dataset:
    """Read a data set (see the module docstring); `format` overrides the detection."""
    selection = selection or Selection()
    resolved = [Path(p).expanduser() for p in paths]
    if not resolved:
        raise DatasetError("no data set given")
    for p in resolved:
        if not p.exists():
            raise DatasetError(f"data set path {p} does not exist")
    kind = format or detect_format(resolved)
    if kind not in FORMATS:
        raise DatasetError(f"unknown data set format {kind!r}; known: {', '.join(FORMATS)}")
    images = Path(images_dir).expanduser() if images_dir else None
    if images is not None and not images.is_dir():
        raise DatasetError(f"images folder {images} does not exist")
    loaders: Dict[str, Callable[..., Dataset]] = {
        "coco": _load_coco, "lvis": _load_coco, "saco": _load_saco, "sa1b": _load_sa1b,
        "labels": _load_labels, "bsds": _load_bsds}
    dataset = loaders[kind](resolved, images, selection, kind)
    if not dataset.images:
        missing = dataset.skipped.get("image file missing", 0)
        hint = f" ({missing} listed images have no file; see --images)" if missing else ""
        raise DatasetError(f"no images to evaluate in {dataset.source}{hint}")
    return dataset


def _images_folder(json_path: Path, images: Optional[Path]) -> List[Path]:
    if images is not None:
        return [images]
    return [json_path.parent, json_path.parent / "images"]


def _find_image(name: str, folders: Sequence[Path]) -> Optional[Path]:
    for folder in folders:
        for candidate in (folder / name, folder / Path(name).name):
            if candidate.is_file():
                return candidate
    return None


def _instance(ann: dict, height: int, width: int, dataset: Dataset, what: str, lvis: bool) -> Optional[Instance]:
    try:
        rle = to_rle(ann["segmentation"], height, width)
    except (KeyError, ValueError, TypeError) as err:
        dataset.skip("annotation without a readable mask", f"{what}: {err}")
        return None
    area_px = float(rle_areas([rle])[0])
    bbox = tuple(float(v) for v in ann.get("bbox") or rle_boxes([rle])[0])
    if area_px == 0:
        dataset.skip("empty mask", what)
        return None
    if bbox[2] <= 0 or bbox[3] <= 0:
        dataset.skip("zero-area box", what)
        return None
    crowd = bool(ann.get("iscrowd", 0))
    if crowd:
        dataset.skip("crowd annotation (never prompted)", what)
    return Instance(int(ann.get("id", 0)), rle, int(ann.get("category_id", 1)), float(ann.get("area", area_px)),
                    bbox, crowd=crowd, ignore=bool(ann.get("ignore", 0)) if lvis else False)


def _load_coco(paths: Sequence[Path], images: Optional[Path], selection: Selection, kind: str) -> Dataset:
    path = paths[0]
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise DatasetError(f"{path} is not a COCO/LVIS file: it needs 'images', 'annotations' and 'categories' lists")
    categories = {int(c["id"]): dict(c) for c in doc.get("categories", [])}
    dataset = Dataset(kind, str(path), [], categories)
    wanted = _category_filter(categories, selection.categories)
    by_image = defaultdict(list)
    known = {im["id"] for im in doc["images"]}
    for ann in doc["annotations"]:
        if ann.get("image_id") not in known:
            dataset.skip("annotation of an unknown image", f"annotation {ann.get('id')} -> image {ann.get('image_id')}")
        elif int(ann.get("category_id", -1)) not in categories:
            dataset.skip("annotation of an unknown category", f"annotation {ann.get('id')} -> category {ann.get('category_id')}")
        else:
            by_image[ann["image_id"]].append(ann)
    folders = _images_folder(path, images)
    for im in sorted(doc["images"], key=lambda im: im["id"]):
        name = im.get("file_name") or Path(str(im.get("coco_url", ""))).name
        anns = [a for a in by_image[im["id"]] if wanted is None or int(a["category_id"]) in wanted]
        if wanted is not None and not anns:
            continue
        size = _image_size(im, name, folders, dataset)
        if size is None:
            continue
        item = EvalImage(im["id"], name, Path(name), *size,
                         neg_category_ids=[int(c) for c in im.get("neg_category_ids", [])],
                         not_exhaustive_category_ids=[int(c) for c in im.get("not_exhaustive_category_ids", [])])
        item.instances = [x for a in anns if (x := _instance(a, item.height, item.width, dataset,
                                                              f"{name} annotation {a.get('id')}", kind == "lvis"))]
        dataset.images.append(item)
    dataset.images = selection.pick(dataset.images)
    _locate_files(dataset, folders)
    if wanted is not None:
        dataset.categories = {k: v for k, v in categories.items() if k in wanted}
    return dataset


def _image_size(info: dict, name: str, folders: Sequence[Path], dataset: Dataset) -> Optional[tuple]:
    """(height, width) as the JSON gives them, else read from the image (some tools leave them out;
    only those images are decoded here); None, counted as skipped, when there is no readable file."""
    if "height" in info and "width" in info:
        return int(info["height"]), int(info["width"])
    path = _find_image(name, folders)
    if path is None:
        dataset.skip("image file missing", f"{name} (looked in {', '.join(map(str, folders))})")
        return None
    from ..io.image import load_image

    try:
        return tuple(load_image(path).shape[:2])
    except Exception as err:  # noqa: BLE001 - an unreadable file is counted, as the runner reports one
        dataset.skip("image without a size that cannot be read", f"{name}: {type(err).__name__}: {err}")
        return None


def _locate_files(dataset: Dataset, folders: Sequence[Path]) -> None:
    found = []
    for item in dataset.images:
        path = _find_image(item.name, folders)
        if path is None:
            dataset.skip("image file missing", f"{item.name} (looked in {', '.join(map(str, folders))})")
            continue
        item.path = path
        found.append(item)
    dataset.images = found


def _category_filter(categories: Dict[int, dict], names: Optional[Sequence[str]]) -> Optional[set]:
    if not names:
        return None
    by_name = {c["name"]: k for k, c in categories.items()}
    wanted, unknown = set(), []
    for name in names:
        if name in by_name:
            wanted.add(by_name[name])
        elif name.isdigit() and int(name) in categories:
            wanted.add(int(name))
        else:
            unknown.append(name)
    if unknown:
        known = ", ".join(sorted(by_name)[:20]) + (" ..." if len(by_name) > 20 else "")
        raise DatasetError(f"--categories {', '.join(unknown)} matched no category of the data set; its categories: {known}")
    return wanted


def _agnostic_filter(selection: Selection, source: str) -> None:
    if selection.categories and set(selection.categories) - {"object", "1"}:
        raise DatasetError(f"{source} is class-agnostic (one category, 'object'): --categories "
                           f"{', '.join(selection.categories)} matches nothing")


def _load_saco(paths: Sequence[Path], images: Optional[Path], selection: Selection, kind: str) -> Dataset:
    docs = [_read_json(p) for p in paths]
    for p, doc in zip(paths, docs):
        if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
            raise DatasetError(f"{p} is not an SA-Co/Gold file: it needs an 'images' list of image-phrase pairs")
    first_ids = [im["id"] for im in docs[0]["images"]]
    for p, doc in zip(paths[1:], docs[1:]):
        if sorted(im["id"] for im in doc["images"]) != sorted(first_ids):
            raise DatasetError(f"{p} lists other image-phrase pairs than {paths[0]}: the annotator files of one "
                               "SA-Co/Gold subset must list the same pairs")
    dataset = Dataset("saco", ", ".join(map(str, paths)), [], dict(AGNOSTIC))
    per_doc = []
    for doc in docs:
        anns = defaultdict(list)
        for ann in doc.get("annotations", []):
            anns[ann["image_id"]].append(ann)
        per_doc.append((anns, {im["id"]: im for im in doc["images"]}))
    by_file: Dict[str, EvalImage] = {}
    for im in sorted(docs[0]["images"], key=lambda im: im["id"]):
        name = im["file_name"]
        item = by_file.get(name)
        if item is None:
            item = by_file[name] = EvalImage(len(by_file) + 1, name, Path(name), int(im["height"]), int(im["width"]))
        annotations, exhaustive = [], True
        for anns, ims in per_doc:
            exhaustive &= bool(ims[im["id"]].get("is_instance_exhaustive", True))
            annotations.append([x for a in anns[im["id"]] if (x := _instance(a, item.height, item.width, dataset,
                                                                               f"pair {im['id']}", False))])
        item.pairs.append(Pair(int(im["id"]), str(im["text_input"]), exhaustive, annotations))
    if selection.categories:
        wanted = set(selection.categories)
        for item in by_file.values():
            item.pairs = [p for p in item.pairs if p.phrase in wanted]
        if not any(item.pairs for item in by_file.values()):
            raise DatasetError(f"--categories {', '.join(wanted)} matched no phrase of the data set")
    dataset.images = selection.pick([i for i in by_file.values() if i.pairs])
    _locate_files(dataset, _images_folder(paths[0], images))
    return dataset


def _load_sa1b(paths: Sequence[Path], images: Optional[Path], selection: Selection, kind: str) -> Dataset:
    folder = paths[0] if paths[0].is_dir() else paths[0].parent
    _agnostic_filter(selection, str(folder))
    dataset = Dataset("sa1b", str(folder), [], dict(AGNOSTIC))
    files = selection.pick(sorted(p for p in folder.glob("*.json") if _is_sa1b_json(p)))
    for k, json_path in enumerate(files, start=1):
        doc = _read_json(json_path)
        info = doc.get("image", {})
        name = info.get("file_name") or json_path.with_suffix(".jpg").name
        size = _image_size(info, name, [images or folder], dataset)
        if size is None:
            continue
        item = EvalImage(int(info.get("image_id", k)), name, Path(name), *size)
        item.instances = [x for a in doc.get("annotations", []) if (x := _instance(dict(a, category_id=1), item.height,
                                                                                    item.width, dataset, f"{name} mask {a.get('id')}", False))]
        dataset.images.append(item)
    _locate_files(dataset, [images or folder])
    return dataset


def read_label_map(path: Path) -> np.ndarray:
    """An instance-label image (PNG or TIFF; RGB-coded ids too), values as they are."""
    from ..sam.training.data import read_label_image

    try:
        return read_label_image(path)
    except ValueError as err:
        raise DatasetError(str(err)) from None


def instances_from_labels(labels: np.ndarray) -> List[Instance]:
    ids = [int(v) for v in np.unique(labels) if v != 0]
    if not ids:
        return []
    # A chunk of masks at a time: a microscopy label map holds thousands of cells, and all of their
    # full-size masks at once (ids x H x W bytes) would not fit in memory.
    rles = [rle for start in range(0, len(ids), LABEL_CHUNK)
            for rle in encode(np.stack([labels == v for v in ids[start:start + LABEL_CHUNK]]))]
    areas, boxes = rle_areas(rles), rle_boxes(rles)
    return [Instance(v, rle, 1, float(a), tuple(float(x) for x in b)) for v, rle, a, b in zip(ids, rles, areas, boxes)]


def _load_labels(paths: Sequence[Path], images: Optional[Path], selection: Selection, kind: str) -> Dataset:
    root = paths[0]
    _agnostic_filter(selection, str(root))
    label_dir = root / "labels" if (root / "labels").is_dir() else root / "masks"
    image_dir = images or root / "images"
    dataset = Dataset("labels", str(root), [], dict(AGNOSTIC))
    labels_by_stem = {p.stem: p for p in sorted(label_dir.iterdir()) if p.suffix.lower() in LABEL_SUFFIXES}
    image_files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if image_dir.is_dir() else []
    for stem in sorted(set(labels_by_stem) - {p.stem for p in image_files}):
        dataset.skip("image file missing", f"{labels_by_stem[stem].name} has no image in {image_dir}")
    paired = [p for p in image_files if p.stem in labels_by_stem]
    for p in image_files:
        if p.stem not in labels_by_stem:
            dataset.skip("image without a label map", p.name)
    for k, image_path in enumerate(selection.pick(paired), start=1):
        labels = read_label_map(labels_by_stem[image_path.stem])
        item = EvalImage(k, image_path.name, image_path, int(labels.shape[0]), int(labels.shape[1]))
        item.instances = instances_from_labels(labels)
        dataset.images.append(item)
    return dataset


def _bsds_root(path: Path) -> Optional[Path]:
    for candidate in (path, path / "data", path / "BSDS500" / "data", path / "BSR" / "BSDS500" / "data"):
        if (candidate / "groundTruth").is_dir() and (candidate / "images").is_dir():
            return candidate
    return None


def read_bsds_truth(path: Path) -> List[tuple]:
    """(segmentation, boundaries) of every annotator in a BSDS500 groundTruth .mat file."""
    from scipy.io import loadmat

    try:
        cells = loadmat(str(path))["groundTruth"]
    except Exception as err:  # noqa: BLE001 - scipy raises several kinds for a bad file
        raise DatasetError(f"cannot read BSDS ground truth {path}: {err}") from None
    # scipy gives MATLAB's cell of structs as nested 1x1 object arrays: unwrap down to the 2-D maps.
    def unwrap(value):
        value = np.asarray(value)
        while value.dtype == np.dtype(object) and value.size == 1:
            value = np.asarray(value.ravel()[0])
        return value

    try:
        return [(unwrap(cell["Segmentation"]), unwrap(cell["Boundaries"]).astype(bool)) for cell in cells.ravel()]
    except (KeyError, ValueError, IndexError) as err:
        raise DatasetError(f"{path} is not BSDS ground truth (a cell of structs with Segmentation and "
                           f"Boundaries): {err}") from None


def _load_bsds(paths: Sequence[Path], images: Optional[Path], selection: Selection, kind: str) -> Dataset:
    root = _bsds_root(paths[0])
    _agnostic_filter(selection, str(root))
    image_dir = images or root / "images" / selection.split
    truth_dir = root / "groundTruth" / selection.split
    if not truth_dir.is_dir():
        splits = sorted(p.name for p in (root / "groundTruth").iterdir() if p.is_dir())
        raise DatasetError(f"BSDS split {selection.split!r} not found in {root / 'groundTruth'}; splits: {', '.join(splits)}")
    dataset = Dataset("bsds", str(root), [], dict(AGNOSTIC))
    mats = sorted(truth_dir.glob("*.mat"))
    for k, mat in enumerate(selection.pick(mats), start=1):
        image_path = next((image_dir / (mat.stem + s) for s in IMAGE_SUFFIXES if (image_dir / (mat.stem + s)).is_file()), None)
        if image_path is None:
            dataset.skip("image file missing", f"{mat.stem} (no image in {image_dir})")
            continue
        truth = read_bsds_truth(mat)
        segmentation = truth[0][0]
        item = EvalImage(k, image_path.name, image_path, int(segmentation.shape[0]), int(segmentation.shape[1]), boundary_file=mat)
        item.instances = instances_from_labels(segmentation)
        dataset.images.append(item)
    return dataset

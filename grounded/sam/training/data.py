"""Training data: images with instance masks, from COCO json, folders of label images, SA-1B json.

Every dataset yields `TrainItem(key, image HxWx3 uint8, masks N x H x W bool)`. `build_dataset(spec)`
makes one from a config entry: `{type: coco, annotations: x.json, images: dir}`,
`{type: label_pngs, images: dir, labels: dir}` or `{type: sa1b, folder: dir}`.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class TrainItem:
    key: str  # identifies the image (used to name its cached embedding)
    image: np.ndarray  # H x W x 3 uint8 RGB
    masks: np.ndarray  # N x H x W bool


class ArrayDataset:
    """Items already in memory (tests, benchmarks)."""

    def __init__(self, items: Sequence[TrainItem]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> TrainItem:
        return self.items[i]


def checked_item(item: TrainItem) -> TrainItem:
    """`item` as training takes it: the image H x W x 3 uint8 (grey, alpha, 16-bit and float arrays
    converted as `grounded.io.image.load_image` converts them), the masks N x H x W bool (non-zero is
    inside: 0/255 masks are not 255 times larger) at the image's size. Otherwise an error naming it."""
    from ...io.image import ImageError, load_image

    image = item.image
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3):
        try:
            image = load_image(np.asarray(image))
        except ImageError as err:
            raise ValueError(f"training item {item.key!r}: {err}") from None
    masks = np.asarray(item.masks)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"training item {item.key!r}: masks must be N x H x W at the image's size {image.shape[:2]}, "
                         f"got shape {masks.shape}")
    if masks.dtype != bool:
        masks = masks != 0
    return item if image is item.image and masks is item.masks else TrainItem(item.key, image, masks)


def polygons_to_mask(polygons: List[List[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (each a flat [x0, y0, x1, y1, ...] list) -> H x W bool, filled (union)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if polygons and all(isinstance(v, (int, float)) for v in polygons):
        polygons = [polygons]  # one polygon written flat, as some exporters do
    for poly in polygons:
        if len(poly) < 6:
            continue  # fewer than 3 points encloses nothing
        draw.polygon([(float(x), float(y)) for x, y in zip(poly[0::2], poly[1::2])], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def segmentation_to_mask(segmentation, height: int, width: int, where: str = "") -> np.ndarray:
    """A COCO `segmentation` (polygon list, compressed or uncompressed RLE) -> H x W bool."""
    from ...rle import decode_rle

    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        mask = decode_rle(segmentation)
        if mask.shape != (height, width):
            raise ValueError(f"{where}: RLE size {mask.shape} differs from the image's {height}x{width}")
        return mask
    raise ValueError(f"{where}: segmentation must be a polygon list or an RLE dict with size and counts")


def _load_image(path: Path) -> np.ndarray:
    from ...io.image import load_image

    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    return load_image(path)


class CocoDataset:
    """A COCO instances json (RLE or polygon segmentations); images under `images` (default: the
    json's folder). Crowd annotations (iscrowd=1) are skipped: they mark regions, not instances."""

    def __init__(self, annotations, images=None, skip_crowd: bool = True):
        path = Path(annotations)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file {path} does not exist")
        doc = json.loads(path.read_text())
        if "images" not in doc or "annotations" not in doc:
            raise ValueError(f"{path} is not a COCO instances file: it needs 'images' and 'annotations'")
        self.path = path
        by_image: Dict[int, list] = {}
        for ann in doc["annotations"]:
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            for key in ("image_id", "segmentation"):
                if key not in ann:
                    raise ValueError(f"{path}: annotation {ann.get('id')} has no {key!r}; training needs the "
                                     "image id and the mask (polygons or RLE) of every annotation")
            by_image.setdefault(ann["image_id"], []).append(ann)
        self.images = [im for im in doc["images"] if by_image.get(im["id"])]
        self.annotations = by_image
        self.image_dir = Path(images) if images else path.parent
        # Checked now, not at the step that reaches the image hours into a run.
        missing = [im["file_name"] for im in self.images if not (self.image_dir / im["file_name"]).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {path} are not in {self.image_dir}, e.g. "
                                    f"{', '.join(missing[:3])}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> TrainItem:
        info = self.images[i]
        image = _load_image(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise ValueError(f"{info['file_name']}: {self.path} says {info.get('height', '?')}x{info.get('width', '?')}"
                             f", the file is {h}x{w}")
        masks = [segmentation_to_mask(a["segmentation"], h, w, f"{self.path} annotation {a.get('id')}")
                 for a in self.annotations[info["id"]]]
        return TrainItem(f"coco:{info['file_name']}", image, np.stack(masks))


class LabelPngDataset:
    """Pairs of images and instance-label images (same stem): each non-zero label value is one mask.
    Label files may be PNG (8/16-bit) or TIFF."""

    def __init__(self, images, labels):
        self.image_dir, self.label_dir = Path(images), Path(labels)
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise FileNotFoundError(f"folder {d} does not exist")
        labels_by_stem = {p.stem: p for p in self.label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.pairs: List[Tuple[Path, Path]] = [(p, labels_by_stem[p.stem]) for p in images if p.stem in labels_by_stem]
        if not self.pairs:
            raise ValueError(f"no image in {self.image_dir} has a label image of the same name in {self.label_dir}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> TrainItem:
        image_path, label_path = self.pairs[i]
        image = _load_image(image_path)
        labels = read_label_image(label_path)
        if labels.shape != image.shape[:2]:
            raise ValueError(f"{label_path} is {labels.shape}, its image {image_path} is {image.shape[:2]}")
        ids = [v for v in np.unique(labels) if v != 0]
        masks = np.stack([labels == v for v in ids]) if ids else np.zeros((0,) + labels.shape, bool)
        return TrainItem(f"labels:{image_path.name}", image, masks)


def read_label_image(path: Path) -> np.ndarray:
    """An integer label image, values kept as they are (no scaling)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        labels = tifffile.imread(str(path))
    else:
        from PIL import Image

        with Image.open(path) as im:
            labels = np.asarray(im)
    if labels.ndim == 3 and labels.shape[-1] in (1, 2):  # one channel, or a grey label with alpha (LA)
        labels = labels[..., 0]
    elif labels.ndim == 3 and labels.shape[-1] in (3, 4):  # RGB-coded: one id per colour (alpha is no part of it)
        labels = (labels[..., 0].astype(np.int64) << 16) | (labels[..., 1].astype(np.int64) << 8) | labels[..., 2]
    elif labels.ndim == 3 and labels.shape[0] == 1:  # a TIFF of one page
        labels = labels[0]
    if labels.ndim != 2:
        raise ValueError(f"{path}: a label image must be 2-D, got shape {labels.shape}")
    return labels


class Sa1bDataset:
    """The SA-1B layout: `sa_1.jpg` next to `sa_1.json` holding {"image": {...}, "annotations":
    [{"segmentation": RLE, ...}]}."""

    def __init__(self, folder):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"folder {self.folder} does not exist")
        # Other JSON files beside them (a COCO file, metadata) are not images: left out now, as `grounded
        # eval` leaves them out, not found at the step that reaches them.
        self.jsons = sorted(p for p in self.folder.glob("*.json") if is_sa1b_json(p))
        if not self.jsons:
            raise ValueError(f"no SA-1B style .json files in {self.folder}")

    def __len__(self) -> int:
        return len(self.jsons)

    def __getitem__(self, i: int) -> TrainItem:
        try:
            doc = json.loads(self.jsons[i].read_text())
        except ValueError as err:
            raise ValueError(f"{self.jsons[i]} is not valid JSON: {err}") from None
        if not isinstance(doc, dict) or "annotations" not in doc:
            raise ValueError(f"{self.jsons[i]} has no 'annotations'")
        name = doc.get("image", {}).get("file_name") or self.jsons[i].with_suffix(".jpg").name
        image = _load_image(self.folder / name)
        h, w = image.shape[:2]
        masks = [segmentation_to_mask(a["segmentation"], h, w, f"{self.jsons[i]} annotation {k}")
                 for k, a in enumerate(doc["annotations"])]
        masks = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return TrainItem(f"sa1b:{name}", image, masks)


def is_sa1b_json(path: Path) -> bool:
    """Whether a JSON file's start names an image and its annotations, as SA-1B's files do."""
    with open(path, "rb") as f:
        head = f.read(4096)
    return b'"image"' in head and b'"annotations"' in head


class ConcatDataset:
    def __init__(self, datasets: Sequence):
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> TrainItem:
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.datasets[k][i - int(self.offsets[k])]


def build_dataset(spec: dict, base: Path = Path(".")):
    """One dataset from a config entry; relative paths are taken from `base` (the config's folder)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    path = lambda key: None if spec.get(key) is None else (base / spec[key])  # noqa: E731
    builders = {
        "coco": lambda: CocoDataset(path("annotations"), path("images")),
        "label_pngs": lambda: LabelPngDataset(path("images"), path("labels")),
        "sa1b": lambda: Sa1bDataset(path("folder")),
    }
    wanted = {"coco": {"annotations", "images"}, "label_pngs": {"images", "labels"}, "sa1b": {"folder"}}
    if kind not in builders:
        raise ValueError(f"dataset type {kind!r} is not one of {sorted(builders)}")
    unknown = set(spec) - wanted[kind]
    if unknown:
        raise ValueError(f"dataset of type {kind!r} has unknown keys {sorted(unknown)}; it takes {sorted(wanted[kind])}")
    return builders[kind]()


def select_masks(masks: np.ndarray, rng: np.random.Generator, max_masks: int = 64,
                 max_fraction: float = 0.9) -> np.ndarray:
    """Indices of up to `max_masks` masks, sampled without replacement, after dropping empty masks and
    those covering more than `max_fraction` of the image (SAM paper: > 90%)."""
    if len(masks) == 0:  # an image with nothing labelled (a reviewed empty image) trains nothing
        return np.zeros(0, int)
    area = masks.reshape(len(masks), -1).sum(1)
    keep = np.flatnonzero((area > 0) & (area <= max_fraction * masks[0].size))
    if len(keep) > max_masks:
        keep = np.sort(rng.choice(keep, max_masks, replace=False))
    return keep

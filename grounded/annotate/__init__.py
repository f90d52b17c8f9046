"""The annotation page: SAM's prompt encoder and mask decoder run in the browser (onnxruntime-web), a
local server (server.py) serves the images, their embeddings and the page, and saves every accepted
mask (store.py). `grounded annotate IMAGES --out DIR` starts it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .server import STATIC_DIR, Session, make_server
from .store import LOG_SCHEMA, AnnotationStore, ImageRecord, coco_annotations

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

__all__ = ["LOG_SCHEMA", "STATIC_DIR", "collect_images", "make_server", "open_session", "sam_embedder"]


def collect_images(inputs: Sequence[str]) -> Tuple[List[ImageRecord], Dict[str, List[dict]]]:
    """Image files, folders (their images, sorted) or one COCO file -> records, and the COCO file's
    annotations per image key (empty otherwise)."""
    paths: List[Tuple[Path, str, int]] = []
    coco = None
    for item in inputs:
        path = Path(item).expanduser()
        if path.suffix.lower() == ".json":
            coco = json.loads(path.read_text())
            for image in coco.get("images", []):
                paths.append((path.parent / image["file_name"], image["file_name"], int(image["id"])))
        elif path.is_dir():
            paths += [(p, str(p), 0) for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.exists():
            paths.append((path, str(path), 0))
        else:
            raise FileNotFoundError(f"no such image, folder or COCO file: {item}")
    if not paths:
        raise ValueError(f"no images in {', '.join(inputs)}")
    records, seen = [], {}
    for i, (path, file_name, image_id) in enumerate(paths):
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "image"
        seen[stem] = seen.get(stem, 0) + 1
        key = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        records.append(ImageRecord(key=key, path=path, file_name=file_name, image_id=image_id or i + 1))
    initial = coco_annotations(coco, {r.file_name: r.key for r in records}) if coco else {}
    return records, initial


def sam_embedder(model: str = "mobile_sam") -> Tuple[Callable[[np.ndarray], np.ndarray], object]:
    """An embedding function (HxWx3 uint8 -> 1xCxhxw float32) of any SAM grounded loads, and the model."""
    from ..sam import SamPredictor, from_pretrained
    from ..sam.build import IsSam2Error

    try:
        sam = from_pretrained(model)
    except IsSam2Error:
        raise ValueError(f"{model} is a SAM 2 model: the annotation page runs SAM's and MobileSAM's prompt "
                         "encoder and mask decoder in the browser (their ONNX export); SAM 2's decoder, which "
                         "also takes the encoder's high-resolution features, has no page export yet") from None
    predictor = SamPredictor(sam, cache_size=1)

    def embed(image: np.ndarray) -> np.ndarray:
        predictor.set_image(image)
        return predictor.get_image_embedding().float().cpu().numpy()

    return embed, sam


def open_session(inputs: Sequence[str], out: str, model: str = "mobile_sam", embed_in_page: bool = False,
                 labels: Optional[List[str]] = None, cache_dir: Optional[str] = None) -> Session:
    """Images, output folder and model -> a Session ready for `make_server` (graphs exported once)."""
    from ..export import export_onnx

    records, initial = collect_images(inputs)
    store = AnnotationStore(Path(out), records, initial)
    embed, sam = sam_embedder(model)
    model_dir = export_onnx(sam, cache_dir, encoder=True if embed_in_page else None)
    return Session(records, store, model_dir, None if embed_in_page else embed, sam.image_encoder.img_size,
                   labels, embed_in_page)

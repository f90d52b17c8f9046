"""The annotation page: SAM's (or SAM 2 / 2.1's) prompt encoder and mask decoder run in the browser
(onnxruntime-web), a local server (server.py) serves the images, their embeddings (with SAM 2, the
high-res maps too) and the page, and saves every accepted mask (store.py). `grounded annotate IMAGES
--out DIR` starts it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .server import STATIC_DIR, Session, make_server
from .store import LOG_SCHEMA, AnnotationStore, ImageRecord, coco_annotations

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

__all__ = ["LOG_SCHEMA", "STATIC_DIR", "collect_images", "make_server", "model_embedder", "open_session",
           "page_family", "sam_embedder"]


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


def page_family(sam) -> str:
    """"sam2" for a SAM 2 / 2.1 model, "sam" for SAM 1 (the manifest's "family")."""
    from ..sam2 import Sam2

    return "sam2" if isinstance(sam, Sam2) else "sam"


def sam_embedder(model: str = "mobile_sam") -> Tuple[Callable[[np.ndarray], np.ndarray], object]:
    """`model_embedder` of any SAM or SAM 2 / 2.1 model grounded loads (a name, file or folder), and the model."""
    from ..sam2 import load_sam_or_sam2

    sam = load_sam_or_sam2(model, image_encoder_backend="auto")
    return model_embedder(sam), sam


def model_embedder(sam) -> Callable[[np.ndarray], np.ndarray]:
    """The server's embedding function of a loaded model. SAM: HxWx3 uint8 -> 1xCxhxw float32. SAM 2:
    -> one float32 vector, the image embedding then the two high-res maps (the manifest's
    "image_inputs", in order, each flattened in C order), what its graph takes."""
    from ..sam import SamPredictor
    from ..sam2 import SAM2ImagePredictor

    if page_family(sam) == "sam2":
        sam2_predictor = SAM2ImagePredictor(sam, cache_size=1)

        def embed_sam2(image: np.ndarray) -> np.ndarray:
            sam2_predictor.set_image(image)
            parts = [sam2_predictor.get_image_embedding(), *sam2_predictor.high_res_features]
            return np.concatenate([p.float().cpu().numpy().ravel() for p in parts])

        return embed_sam2
    predictor = SamPredictor(sam, cache_size=1)

    def embed(image: np.ndarray) -> np.ndarray:
        predictor.set_image(image)
        return predictor.get_image_embedding().float().cpu().numpy()

    return embed


def open_session(inputs: Sequence[str], out: str, model: str = "mobile_sam", embed_in_page: bool = False,
                 labels: Optional[List[str]] = None, cache_dir: Optional[str] = None) -> Session:
    """Images, output folder and model -> a Session ready for `make_server` (graphs exported once)."""
    from ..export import export_onnx

    records, initial = collect_images(inputs)
    embed, sam = sam_embedder(model)
    if embed_in_page and page_family(sam) == "sam2":
        raise ValueError(f"{model} is a SAM 2 model: --embed-in-page runs MobileSAM's encoder in the page, and SAM 2's "
                         "Hiera encoder is too slow there; leave the option out and the server computes the embeddings")
    store = AnnotationStore(Path(out), records, initial)
    model_dir = export_onnx(sam, cache_dir, encoder=True if embed_in_page else None)
    return Session(records, store, model_dir, None if embed_in_page else embed, sam.image_encoder.img_size,
                   labels, embed_in_page)

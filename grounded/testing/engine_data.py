"""The data engine's proof data: the stardist nuclei image cut into four quadrants, written as a folder
of PNGs with COCO files (tests/test_engine_*.py and bench/engine_stardist.py share it).

    q1.png .. q4.png     top-left, top-right, bottom-left, bottom-right (256 x 256 each)
    heldout.json         q4's nuclei (the held-out split, given to `engine init --coco`)
    truth.json           q1..q3's nuclei (the simulated annotator's ground truth, `round --truth`)

`per_quadrant` keeps that many nuclei of each quadrant (the largest; the CI-short variant: 4), and
with `crop` the quadrant is cut to the box around them (plus a margin), so that a short run looks
at the kept nuclei only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

NAMES = ("q1.png", "q2.png", "q3.png", "q4.png")


def write_quadrants(image: np.ndarray, labels: np.ndarray, folder, per_quadrant: Optional[int] = None,
                    crop: bool = False, margin: int = 12) -> Path:
    from PIL import Image

    from ..eval.masks import encode

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    h, w = labels.shape[0] // 2, labels.shape[1] // 2
    cocos = {"truth": {"images": [], "annotations": [], "categories": [{"id": 1, "name": "nucleus"}]},
             "heldout": {"images": [], "annotations": [], "categories": [{"id": 1, "name": "nucleus"}]}}
    for k, (y, x) in enumerate(((0, 0), (0, w), (h, 0), (h, w))):
        im, lab = image[y:y + h, x:x + w], labels[y:y + h, x:x + w]
        ids = [i for i in np.unique(lab) if i != 0]
        # Nuclei cut by the quadrant's border stay: they are objects of this image as it is.
        if per_quadrant is not None:
            ids = sorted(ids, key=lambda i: -int((lab == i).sum()))[:per_quadrant]
        if crop and ids:
            ys, xs = np.nonzero(np.isin(lab, ids))
            y0, y1 = max(0, ys.min() - margin), min(lab.shape[0], ys.max() + 1 + margin)
            x0, x1 = max(0, xs.min() - margin), min(lab.shape[1], xs.max() + 1 + margin)
            im, lab = im[y0:y1, x0:x1], lab[y0:y1, x0:x1]
            ids = [i for i in ids if (lab == i).any()]
        Image.fromarray(np.ascontiguousarray(im)).save(folder / "images" / NAMES[k])
        coco = cocos["heldout" if k == 3 else "truth"]
        coco["images"].append({"id": k + 1, "file_name": NAMES[k], "height": int(lab.shape[0]), "width": int(lab.shape[1])})
        if ids:
            for rle in encode(np.stack([lab == i for i in ids])):
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k + 1, "category_id": 1,
                                            "segmentation": rle, "iscrowd": 0})
    for name, coco in cocos.items():
        (folder / f"{name}.json").write_text(json.dumps(coco))
    return folder


# The proof's settings: FULL is bench/engine_stardist.py's; SHORT the CI variant (4 nuclei per
# quadrant, cropped to them, 2 training steps, 5 clicks in the held-out protocol, an 8x8 grid).
SHORT = {"per_quadrant": 4, "crop": True, "steps": 2, "clicks": 5, "points_per_side": 8}
FULL = {"per_quadrant": None, "crop": False, "steps": 20, "clicks": 20, "points_per_side": 32}


def run_stardist_rounds(image: np.ndarray, labels: np.ndarray, out, checkpoint: str, settings: dict, log=print) -> dict:
    """Round 1 manual on q1, round 2 semi on q2 (both fine-tuned), round 3 auto on q3, by the simulated
    annotator, into project folder out/project; returns project.json's state."""
    import time

    from ..engine import Project, init_project, run_round, start_round

    out = Path(out)
    data = write_quadrants(image, labels, out / "data", settings["per_quadrant"], settings["crop"])
    grid = {"points_per_side": settings["points_per_side"]}
    init_project(data / "images", out / "project", coco=str(data / "heldout.json"), heldout=["q4.png"], model=checkpoint,
                 train={"steps": settings["steps"], "clicks": settings["clicks"]}, stage_settings={"semi": grid, "auto": grid})
    for stage in ("manual", "semi", "auto"):
        start = time.time()
        with Project.open(out / "project") as project:
            entry = start_round(project, stage, take=1)
            run_round(project, entry, truth=str(data / "truth.json"), log=log)
        log(f"round {entry['index']} ({stage}) took {time.time() - start:.0f} s")
    return Project.open(out / "project").state

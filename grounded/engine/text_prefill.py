"""The semi stage's text-grounded pre-fill (`grounded engine round PROJECT --stage semi --prefill text
--categories "nucleus,cell"`): masks for named categories instead of automatic masks.

- A SAM 1 model in force: for each category, a Grounding DINO (`--detector`, a transformers hub id or
  folder, loaded by grounded.detect) gives its boxes above `box_threshold` (tokens above
  `text_threshold`), the round's SAM segments them in one decoder call (grounded.prompting's
  `boxes_to_masks`, as `segment_text`'s grounded mode), and a mask is kept at SAM's predicted IoU
  >= `pred_iou_thresh`.
- A SAM 3 model in force (grounded.sam3): SAM 3's concept segmentation of each category's phrase,
  an instance kept at its score >= `sam3_threshold`; no detector.

The setting (TEXT_PREFILL's values with the options given) is kept in the round's entry of
project.json, so a resumed round pre-fills the images it had not reached the same way; the masks
are the same `prefill` records as the automatic pre-fill's (stages.prefill), labelled with their
category.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .project import TEXT_PREFILL

PREFILLS = ("auto", "text")
SAM3_TYPES = ("sam3", "sam3_video")  # grounded.sam3.load's checkpoint types, named here to keep torch out
# The command-line option of each setting (`grounded engine round`).
OPTIONS = {"detector": "--detector", "box_threshold": "--box-threshold", "text_threshold": "--text-threshold",
           "pred_iou_thresh": "--prefill-iou", "detector_size": "--detector-size", "sam3_threshold": "--sam3-threshold"}


def parse_categories(categories) -> List[str]:
    """"nucleus, cell" (or a list) -> ["nucleus", "cell"]: each a phrase with words, none twice."""
    from ..clip.model import check_text

    items = categories.split(",") if isinstance(categories, str) else list(categories or [])
    names = [check_text(c, "a --categories entry") for c in items if str(c).strip()]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise ValueError(f"--categories names {doubled} more than once")
    return names


def is_sam3(spec: str) -> bool:
    """Whether the model in force is SAM 3: a transformers folder of model_type sam3/sam3_video, or a
    hub id whose name says sam3 (facebook/sam3)."""
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        config = path / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("model_type") in SAM3_TYPES
    return not path.exists() and "/" in str(spec) and "sam3" in str(spec).split("/")[-1].lower()


def prefill_setting(stage: str, prefill: Optional[str], categories=None, model: str = "", **options) -> dict:
    """A new round's pre-fill setting (kept in its entry): {"source": "auto"} or the text pre-fill's
    categories and thresholds (TEXT_PREFILL's defaults for the options left None); a clear error for
    options that do not fit together."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(TEXT_PREFILL))
    if unknown:
        raise TypeError(f"unknown text pre-fill options {unknown}; known: {sorted(TEXT_PREFILL)}")
    if prefill is not None and prefill not in PREFILLS:
        raise ValueError(f"unknown --prefill {prefill!r}; use one of {', '.join(PREFILLS)}")
    if stage != "semi":
        if prefill is not None or categories or given:
            raise ValueError(f"--prefill, --categories and the detector's options are for semi rounds, not {stage}")
        return {}
    source = prefill or "auto"
    names = parse_categories(categories)
    if source == "auto":
        if names or categories:
            raise ValueError("--categories names what the text pre-fill segments; the automatic pre-fill "
                             "(--prefill auto, the default) takes none: add --prefill text")
        if given:
            raise ValueError(f"{', '.join(OPTIONS[k] for k in sorted(given))} set the text pre-fill; "
                             "add --prefill text --categories ...")
        if is_sam3(model):
            raise ValueError(f"the model in force {model} is SAM 3, which makes no automatic masks: "
                             "pre-fill with --prefill text --categories ...")
        return {"source": "auto"}
    if not names:
        raise ValueError('--prefill text needs --categories, the named categories to pre-fill (e.g. --categories '
                         '"nucleus,cell")')
    for key in ("box_threshold", "text_threshold", "pred_iou_thresh", "sam3_threshold"):
        if key in given and not 0.0 <= given[key] <= 1.0:
            raise ValueError(f"{OPTIONS[key]} must be between 0 and 1, got {given[key]}")
    if is_sam3(model):
        detector_options = sorted(set(given) - {"sam3_threshold"})
        if detector_options:
            raise ValueError(f"the model in force {model} is SAM 3, which segments the categories itself: "
                             f"{', '.join(OPTIONS[k] for k in detector_options)} are for a detector + SAM")
        return {"source": "text", "segmenter": "sam3", "categories": names,
                "sam3_threshold": float(given.get("sam3_threshold", TEXT_PREFILL["sam3_threshold"]))}
    if "sam3_threshold" in given:
        raise ValueError(f"--sam3-threshold is for a SAM 3 model in force; {model} is not one")
    if given.get("detector_size", 1) < 1:
        raise ValueError(f"--detector-size must be a positive number of pixels, got {given['detector_size']}")
    setting = {k: v for k, v in TEXT_PREFILL.items() if k != "sam3_threshold"}
    setting.update(given)
    local = Path(str(setting["detector"])).expanduser()
    if local.exists():  # a folder is kept by its absolute path: a round resumed from elsewhere finds it
        setting["detector"] = str(local.resolve())
    return {"source": "text", "segmenter": "detector+sam", "categories": names, **setting}


def check_detector(setting: dict) -> None:
    """Before a round starts: the detector can be found (a folder, or a hub id in the cache or from the
    hub), else the loader's own error naming everything it tried; no round is left half begun."""
    if setting.get("segmenter") != "detector+sam":
        return
    from ..hub import local_or_hub_folder

    folder = local_or_hub_folder(setting["detector"], "Grounding DINO model")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a transformers Grounding DINO folder (no config.json); convert an "
                                "official checkpoint with `grounded convert grounding-dino`")


def text_proposer(setting: dict, model, segmenter) -> Callable[[np.ndarray], List[dict]]:
    """image -> its confident masks for the setting's categories: [{label, segmentation (RLE), score
    (SAM's predicted IoU, or SAM 3's score), detector_score}]."""
    if setting["segmenter"] == "sam3":
        def propose(image: np.ndarray) -> List[dict]:
            out = []
            for category in setting["categories"]:
                dets = model.segment([image], [[category]], threshold=setting["sam3_threshold"])[0]
                out += [{"label": category, "segmentation": rle, "score": float(s), "detector_score": float(s)}
                        for rle, s in zip(dets.rles, dets.scores)]
            return out

        return propose

    from ..detect import load_detector
    from ..prompting import boxes_to_masks

    detector = load_detector(setting["detector"], device="cpu", size=int(setting["detector_size"]))
    predictor = segmenter.predictor  # the round's SAM, its embedding cache shared with the annotator

    def propose(image: np.ndarray) -> List[dict]:
        out = []
        for category in setting["categories"]:
            dets = detector.detect([image], category, box_threshold=setting["box_threshold"],
                                   text_threshold=setting["text_threshold"])[0]
            dets = boxes_to_masks(predictor, image, dets)
            if not len(dets):
                continue
            iou = dets.data["mask_score"]
            out += [{"label": category, "segmentation": dets.rles[i], "score": float(iou[i]),
                     "detector_score": float(dets.scores[i])}
                    for i in np.flatnonzero(iou >= setting["pred_iou_thresh"])]
        return out

    return propose

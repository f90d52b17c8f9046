"""What every evaluation task provides, and the options they read."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..datasets import Dataset, EvalImage
from ..segmenters import Segmenter
from ..stats import DEFAULT_BOOTSTRAP, Stat


@dataclass
class Options:
    """Settings of every task (each reads its own); all of them are recorded in run.json."""

    seed: int = 0
    bootstrap: int = DEFAULT_BOOTSTRAP
    clicks: int = 20  # points: interactive clicks per object
    amg: Dict[str, Any] = field(default_factory=dict)  # proposals: SamAutomaticMaskGenerator settings
    max_proposals: int = 1000
    detections: Optional[str] = None  # instances: a COCO results file
    detector: Optional[str] = None  # instances / text: a Grounding DINO name or folder
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    modes: Sequence[str] = ("grounded",)  # text
    clip: Optional[str] = None
    clip_pretrained: Optional[str] = None
    projection: Optional[str] = None
    sam3: Optional[str] = None  # text mode sam3: a SAM 3 folder or hub id
    score_threshold: Dict[str, float] = field(default_factory=dict)  # text: per mode ("*" for all)
    device: str = "cpu"
    out: Optional[Path] = None  # the run's folder (for per-image outputs such as edge maps)


@dataclass
class Summary:
    """One model's figures on one task."""

    metrics: Dict[str, Stat]
    curves: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"metrics": {k: v.to_json() for k, v in self.metrics.items()}, "curves": self.curves, "extra": self.extra}


def json_default(value):
    """numpy values for json.dumps(default=...)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Stat):
        return value.to_json()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


Records = List[Tuple[EvalImage, dict]]


class Task:
    name = ""
    reference = True  # whether --reference applies
    headline: Tuple[str, ...] = ()  # the metrics shown in the markdown table, in order

    def __init__(self, dataset: Dataset, options: Options):
        self.dataset, self.options = dataset, options

    def settings(self) -> Dict[str, Any]:
        """What changes this task's records (a resumed run must have the same)."""
        return {"seed": self.options.seed}

    def variants(self, segmenter: Segmenter) -> List[str]:
        """Result labels this task reports for a segmenter (text: one per mode)."""
        return [segmenter.label]

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        raise NotImplementedError

    def summarize(self, records: Records, variant: str) -> Summary:
        raise NotImplementedError

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        return []

    def write_predictions(self, records: Records, label: str, out_dir: Path) -> Optional[Path]:
        """Write the model's predictions as a COCO results file, for tasks that make them."""
        entries = [dict(p, image_id=item.id, category_id=p.get("category_id", 1))
                   for item, record in records for p in record.get("predictions", [])]
        if not any("predictions" in record for _, record in records):
            return None
        path = out_dir / self.name / f"{slug(label)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entries))
        return path


def slug(text: str) -> str:
    """A file name for a model label."""
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)


def rng_for(seed: int, item: EvalImage, instance_id: int) -> np.random.Generator:
    """A generator that depends on the seed, the image and the instance only, so that a subset, a
    resumed run or another model draws the very same random points."""
    import hashlib

    digest = hashlib.blake2b(f"{item.name}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little"), int(instance_id) & 0xFFFFFFFF])


def xywh_to_xyxy(bbox: Sequence[float], width: int, height: int) -> np.ndarray:
    x, y, w, h = bbox
    return np.clip(np.array([x, y, x + w, y + h], np.float64), 0, [width, height, width, height])

"""`text`: text to masks, every mode side by side -> SA-Co's cgF1 (with IL_MCC and pmF1) and mIoU per
phrase (grounded.eval.cgf1).

Pairs come from SA-Co/Gold files (several annotations per pair, non-exhaustive pairs left out), or
are built from a COCO/LVIS file: for each image, every category of the data set is a phrase, positive
where the image has instances of it and negative where it has none (LVIS: only its verified negative
categories; pairs of categories LVIS marks not exhaustive, or COCO pairs with a crowd region, are
not exhaustive and left out).

A mode turns (image, phrases) into scored masks. The score each mode gives, compared with the stated
threshold (`--score-threshold`, 0.5 by default, per mode with MODE=VALUE):
- `grounded`: Grounding DINO's box confidence (boxes to SAM, one mask each);
- `clip`: the CLIP cosine similarity of each automatic mask's masked crop to the phrase;
- `native`: SAM's predicted IoU for its text-prompt mask (one mask per phrase);
- `sam3`: SAM 3's own concept score for each instance of the phrase (`--sam3`, a SAM 3 folder or hub
  id; all phrases of an image in one call over one encoding). SAM 3 does not use the evaluated SAM, so
  its rows are the same under every `--model`.
A new mode registers a `TextMode` in `TEXT_MODES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from ..cgf1 import SCORE_THRESHOLD, PairScore, cgf1_arrays, cgf1_from_arrays, oracle, pair_iou, score_pair
from ..datasets import EvalImage, Pair
from ..masks import encode
from ..segmenters import Segmenter
from ..stats import mean_ci, resampled_ci
from .base import Records, Summary, Task

Scored = List[Tuple[dict, float]]  # (RLE, score) per predicted mask


@dataclass
class TextMode:
    name: str
    needs: Tuple[str, ...]  # "detector", "clip", "projection", "sam3"
    predict: Callable[["TextContext", np.ndarray, Sequence[str]], List[Scored]]


class TextContext:
    """What the modes share for one SAM model: its predictor (so every mode reuses the image's
    embedding), the run's ModelCache for the detector and CLIP, the options, and per-image results."""

    def __init__(self, predictor, options, models=None):
        from ...pipeline.models import ModelCache

        self.predictor, self.options = predictor, options
        self.models = ModelCache() if models is None else models
        self._image_cache: Dict[str, Any] = {}
        self.current_image: str = ""  # the name of the image being evaluated (modes may key caches on it)

    def detector(self):
        if not self.options.detector:
            raise ValueError("text mode 'grounded' needs --detector (a Grounding DINO hub id or folder)")
        return self.models.get("grounding_dino", self.options.detector, self.options.device)

    def clip(self):
        from ...nodes.clip import clip_key

        if not self.options.clip:
            raise ValueError("text modes 'clip' and 'native' need --clip (an open_clip folder, hub id or transformers folder)")
        return self.models.get("clip", clip_key(self.options.clip, self.options.clip_pretrained), self.options.device)

    def sam3(self):
        from ...nodes.sam3 import sam3_model  # also registers the "sam3" model kind

        if not self.options.sam3:
            raise ValueError("text mode 'sam3' needs --sam3 (a SAM 3 folder or hub id, e.g. facebook/sam3)")
        return sam3_model(self.models, self.options.sam3, self.options.device)

    def projection(self):
        from ...text_to_mask import load_projection

        if "projection" not in self._image_cache:
            self._image_cache["projection"] = load_projection(self.options.projection, self.options.device)
        return self._image_cache["projection"]

    def begin_image(self, name: str) -> None:
        """Forget the previous image's automatic masks."""
        self._image_cache.pop("amg", None)
        self.current_image = name

    def candidates(self, image: np.ndarray):
        """The automatic masks of the current image (made once for all its phrases)."""
        from ...detections import Detections
        from ...sam.automatic import SamAutomaticMaskGenerator

        if "amg" not in self._image_cache:
            # The shared predictor already holds the embedding.
            generator = SamAutomaticMaskGenerator(self.predictor.model, output_mode="coco_rle", predictor=self.predictor,
                                                  **self.options.amg)
            records = generator.generate(image)
            self._image_cache["amg"] = Detections.from_sam_records(records, image_size=image.shape[:2])
        return self._image_cache["amg"]


def _grounded(ctx: TextContext, image: np.ndarray, phrases: Sequence[str]) -> List[Scored]:
    from ...text_to_mask import boxes_to_masks

    out = []
    detector = ctx.detector()
    for phrase in phrases:
        dets = detector.detect([image], phrase, box_threshold=ctx.options.box_threshold,
                               text_threshold=ctx.options.text_threshold)[0]
        if not len(dets):
            out.append([])
            continue
        dets = boxes_to_masks(ctx.predictor, image, dets)
        out.append(list(zip(encode(dets.mask), (float(s) for s in dets.scores))))
    return out


def _clip(ctx: TextContext, image: np.ndarray, phrases: Sequence[str]) -> List[Scored]:
    candidates = ctx.candidates(image)
    if not len(candidates):
        return [[] for _ in phrases]
    scores = ctx.clip().score_masks(image, candidates.mask, list(phrases))  # masks x phrases
    rles = encode(candidates.mask)
    return [list(zip(rles, (float(s) for s in scores[:, j]))) for j in range(len(phrases))]


def _native(ctx: TextContext, image: np.ndarray, phrases: Sequence[str]) -> List[Scored]:
    from ...text_to_mask import native_masks

    out = []
    for phrase in phrases:
        dets = native_masks(ctx.predictor, ctx.clip(), ctx.projection(), image, phrase)
        out.append(list(zip(encode(dets.mask), (float(s) for s in dets.scores))))
    return out


def _sam3(ctx: TextContext, image: np.ndarray, phrases: Sequence[str]) -> List[Scored]:
    # Instances below the mode's threshold would be dropped by the task anyway: not decoded at all.
    dets = ctx.sam3().segment([image], [list(phrases)], threshold=mode_threshold(ctx.options, "sam3"))[0]
    if not len(dets):
        return [[] for _ in phrases]
    rles = encode(dets.mask)
    return [[(rles[i], float(dets.scores[i])) for i in np.flatnonzero(dets.class_id == j)] for j in range(len(phrases))]


TEXT_MODES: Dict[str, TextMode] = {
    "grounded": TextMode("grounded", ("detector",), _grounded),
    "clip": TextMode("clip", ("clip",), _clip),
    "native": TextMode("native", ("clip", "projection"), _native),
    "sam3": TextMode("sam3", ("sam3",), _sam3),
}


def mode_threshold(options, mode: str) -> float:
    """The stated score threshold of a mode (`--score-threshold MODE=VALUE`, else `*`, else SA-Co's)."""
    t = options.score_threshold
    return float(t.get(mode, t.get("*", SCORE_THRESHOLD)))


def register_text_mode(mode: TextMode) -> None:
    """Add (or replace) a text mode, e.g. SAM 3's own concept prompts."""
    TEXT_MODES[mode.name] = mode


def pairs_from_categories(item: EvalImage, categories: Dict[int, dict], lvis: bool) -> List[Pair]:
    """Image-phrase pairs of a COCO/LVIS image (see the module docstring)."""
    present = {o.category_id for o in item.instances}
    pairs = []
    for cat, info in sorted(categories.items()):
        objects = [o for o in item.instances if o.category_id == cat]
        if lvis:
            if cat not in present and cat not in item.neg_category_ids:
                continue
            exhaustive = cat not in item.not_exhaustive_category_ids
        else:
            exhaustive = not any(o.crowd for o in objects)
        pairs.append(Pair(f"{item.id}:{cat}", info["name"], exhaustive, [[o for o in objects if not o.crowd]]))
    return pairs


class TextTask(Task):
    name = "text"
    reference = False
    headline = ("cgF1", "IL_MCC", "pmF1", "mIoU")

    def __init__(self, dataset, options):
        super().__init__(dataset, options)
        unknown = [m for m in options.modes if m not in TEXT_MODES]
        if unknown:
            raise ValueError(f"unknown text mode(s) {', '.join(unknown)}; known: {', '.join(TEXT_MODES)}")
        if dataset.format not in ("saco", "coco", "lvis"):
            raise ValueError(f"text needs phrases: an SA-Co/Gold file or a COCO/LVIS file with category names "
                             f"(this data set is {dataset.format}, class-agnostic)")
        for mode in options.modes:
            for need in TEXT_MODES[mode].needs:
                if not getattr(options, need, None):
                    raise ValueError(f"text mode {mode!r} needs --{need}")
        self._contexts: Dict[int, TextContext] = {}
        self._models = None  # one ModelCache for every context: SAM 3, the detector and CLIP load once

    def settings(self):
        o = self.options
        return {"modes": list(o.modes), "detector": o.detector, "clip": o.clip, "projection": o.projection, "sam3": o.sam3,
                "score_threshold": {m: self.threshold(m) for m in o.modes}, "amg": dict(o.amg),
                "box_threshold": o.box_threshold, "text_threshold": o.text_threshold}

    def threshold(self, mode: str) -> float:
        return mode_threshold(self.options, mode)

    def variants(self, segmenter: Segmenter) -> List[str]:
        return [f"{segmenter.label} / {mode}" for mode in self.options.modes]

    def pairs(self, item: EvalImage) -> List[Pair]:
        if item.pairs:
            return item.pairs
        return pairs_from_categories(item, self.dataset.categories, self.dataset.format == "lvis")

    def run_image(self, segmenter: Segmenter, image: np.ndarray, item: EvalImage) -> dict:
        ctx = self._contexts.get(id(segmenter.predictor))
        if ctx is None:
            if self._models is None:
                from ...pipeline.models import ModelCache

                self._models = ModelCache()
            ctx = self._contexts[id(segmenter.predictor)] = TextContext(segmenter.predictor, self.options, self._models)
        ctx.begin_image(item.name)
        pairs = [p for p in self.pairs(item) if p.exhaustive]
        skipped = len(self.pairs(item)) - len(pairs)
        out = {}
        for mode in self.options.modes:
            predictions = TEXT_MODES[mode].predict(ctx, image, [p.phrase for p in pairs]) if pairs else []
            rows = []
            for pair, scored in zip(pairs, predictions):
                kept = [rle for rle, s in scored if s >= self.threshold(mode)]
                annotations = [[o.rle for o in a] for a in pair.annotations]
                best = oracle([score_pair(kept, a) for a in annotations])
                positive = any(annotations)
                iou = max(pair_iou(kept, a) for a in annotations if a) if positive else None
                rows.append({"pair": pair.id, "phrase": pair.phrase, "score": best.to_json(), "iou": iou,
                             "n_pred": len(scored), "n_kept": len(kept)})
            out[mode] = rows
        return {"modes": out, "not_exhaustive": skipped}

    def summarize(self, records: Records, variant: str) -> Summary:
        mode = variant.rsplit(" / ", 1)[1]
        rows = [row for _, r in records for row in r["modes"].get(mode, [])]
        scores = [PairScore.from_json(row["score"]) for row in rows]
        arrays = cgf1_arrays(scores)
        o = self.options
        metrics = {}
        for name in ("cgF1", "IL_MCC", "pmF1"):
            metrics[name] = resampled_ci(len(scores), lambda idx, n=name: cgf1_from_arrays(arrays, idx)[n],
                                         o.bootstrap, o.seed, over="pairs")
        ious = [row["iou"] for row in rows if row["iou"] is not None]
        metrics["mIoU"] = mean_ci(ious, o.bootstrap, o.seed, over="positive pairs")
        figures = cgf1_from_arrays(arrays, np.arange(len(scores))) if scores else {}
        per_phrase: Dict[str, List[float]] = {}
        for row in rows:
            if row["iou"] is not None:
                per_phrase.setdefault(row["phrase"], []).append(row["iou"])
        return Summary(metrics, extra={
            "figures": figures, "score_threshold": self.threshold(mode),
            "pairs": len(rows), "positive_pairs": len(ious),
            "not_exhaustive_pairs_skipped": sum(r.get("not_exhaustive", 0) for _, r in records),
            "per_phrase_miou": {p: {"mIoU": float(np.mean(v)), "pairs": len(v)} for p, v in sorted(per_phrase.items())}})

    def plot(self, summaries: Dict[str, Summary], out_dir: Path) -> List[Path]:
        from ..plots import bar_plot

        keys = ["cgF1", "IL_MCC", "pmF1", "mIoU"]
        values = {label: [s.metrics[k].to_json() if s.metrics[k].n else None for k in keys] for label, s in summaries.items()}
        path = out_dir / "text_cgf1.png"
        bar_plot(keys, values, path, "score", f"Text to masks ({self.dataset.name})")
        return [path]

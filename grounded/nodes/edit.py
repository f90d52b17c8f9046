"""Editing nodes: `apply_edits` (each parsed edit on the mask of its target: remove, recolor,
replace), `inpaint` (one prompt into the detections' masks with Stable Diffusion),
`target_boxes` (boxes given by hand as the targets, when no detector is configured) and
`write_edited` (the edited image and each edit's mask as PNGs).

Which detection is an edit's target: the detections' `edit` data when the prompts came one per
edit (points, boxes), else their labels (the detector's phrases) matched to the target's words,
with "left / right / top / bottom / middle / biggest / smallest" in the target choosing among
several."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import numpy as np

from ..instructions import edit_from_dict
from ..pipeline.models import parse_dtype, register_loader
from ..pipeline.node import Node, Param
from ..types import Detections, Sample
from .export import FileWriter


def _load_inpaint_pipeline(cache, name: str, device: str, dtype: Any):
    """ModelCache loader for kind "sd_inpaint" (a Stable Diffusion inpainting pipeline)."""
    from ..edit.diffusion import load_inpaint_pipeline

    return load_inpaint_pipeline(name, device=device, dtype=dtype)


register_loader("sd_inpaint", _load_inpaint_pipeline)

DIFFUSION_PARAMS = {
    "model": Param(None, str, "Stable Diffusion inpainting model (SD 1.x/2.x or SDXL): hub id or folder; "
                              "null: no diffusion (remove and recolor still work, replace does not)"),
    "steps": Param(30, int, "diffusion steps"),
    "guidance": Param(7.5, float, "classifier-free guidance scale"),
    "seed": Param(0, int, "random seed (the same seed gives the same result)"),
    "scheduler": Param("default", str, "default (the model's), ddim, pndm, euler, euler_a, dpm++, lms, unipc, ..."),
    "negative_prompt": Param("blurry, distorted, low quality", str, "what the inpainting should avoid"),
    "max_side": Param(1024, int, "scale the image so its longest side is at most this for the model (0: never)"),
    "device": Param("auto", str, "cpu, cuda, ... (auto: a GPU when there is one)", fingerprint=False),
    "dtype": Param(None, str, "fp16 / bf16 for the diffusion model (null: float32)", fingerprint=False),
}
SPATIAL = {"left": ("x", min), "leftmost": ("x", min), "right": ("x", max), "rightmost": ("x", max),
           "top": ("y", min), "upper": ("y", min), "above": ("y", min), "bottom": ("y", max), "lower": ("y", max),
           "below": ("y", max), "biggest": ("area", max), "largest": ("area", max), "big": ("area", max),
           "large": ("area", max), "smallest": ("area", min), "small": ("area", min), "little": ("area", min),
           "tiny": ("area", min), "middle": ("center", min), "center": ("center", min), "centre": ("center", min),
           "front": ("area", max), "foreground": ("area", max), "background": ("area", min)}
_STOP = {"the", "a", "an", "on", "in", "of", "at", "to", "by", "with", "near", "next", "one", "side", "and", "that",
         "is", "are", "which", "who", "from", "for", "its", "his", "her", "their", "this", "those", "these", "there"}


def _words(text: str) -> set:
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in re.findall(r"[a-z]+", text.lower())}


def choose_detection(target: str, dets: Detections, candidates: List[int]) -> int:
    """Among candidate detections, the one the target's spatial words point at, else the best-scoring."""
    words = re.findall(r"[a-z]+", target.lower())
    rule = next((SPATIAL[w] for w in reversed(words) if w in SPATIAL), None)
    if rule is None or len(candidates) == 1:
        scores = dets.scores if dets.scores is not None else np.zeros(len(dets))
        return max(candidates, key=lambda i: float(scores[i]))
    key, pick = rule
    boxes = dets.xyxy
    height, width = dets.image_size or (boxes[:, 3].max(), boxes[:, 2].max())

    def measure(i):
        x0, y0, x1, y1 = boxes[i]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return {"x": cx, "y": cy, "area": (x1 - x0) * (y1 - y0),
                "center": np.hypot(cx - width / 2, cy - height / 2)}[key]

    return pick(candidates, key=measure)


def match_targets(edits: List[Dict[str, Any]], dets: Detections) -> List[Optional[int]]:
    """For each edit, the index of its target's detection (None when nothing fits)."""
    if "edit" in dets.data:  # one prompt per edit (points or boxes)
        by_edit = {int(e): i for i, e in enumerate(dets.data["edit"])}
        return [by_edit.get(k) for k in range(len(edits))]
    if not len(dets):
        return [None] * len(edits)
    if dets.labels is None:  # prompts without phrases (segment_points): one per edit, in order
        return [k if k < len(dets) else None for k in range(len(edits))]
    targets = [e["target"] for e in edits]
    distinct = list(dict.fromkeys(targets))
    # a box SAM found no mask in cannot be edited: leave it out of every choice
    usable = set(range(len(dets))) if not dets.has_masks else {i for i, a in enumerate(dets.area) if a > 0}
    out: List[Optional[int]] = []
    for target in targets:
        if len(distinct) == 1:  # the detector was asked for this target alone: every detection is it
            candidates = list(range(len(dets)))
        elif target.lower() in [label.lower() for label in dets.labels]:  # detect's labels are the prompt's classes
            candidates = [i for i, label in enumerate(dets.labels) if label.lower() == target.lower()]
        else:
            wanted = _words(target) - _STOP - set(SPATIAL)
            overlap = [len(wanted & _words(label)) for label in dets.labels]
            best = max(overlap) if overlap else 0
            candidates = [i for i, n in enumerate(overlap) if n == best and n > 0]
        candidates = [i for i in candidates if i in usable]
        out.append(choose_detection(target, dets, candidates) if candidates else None)
    return out


class _DiffusionMixin:
    def _pipe(self):
        if self._pipeline is None:
            if self.model is None:
                return None
            self._pipeline = self._models.get("sd_inpaint", self.model, self.device, parse_dtype(self.dtype))
        return self._pipeline

    def _inpaint(self, image, mask, prompt):
        from ..edit.diffusion import inpaint

        return inpaint(self._pipe(), image, mask, prompt, negative_prompt=self.negative_prompt or None, steps=self.steps,
                       guidance=self.guidance, seed=self.seed, scheduler=self.scheduler, dilate_px=self.dilate,
                       feather_px=self.feather, max_side=self.max_side or None)


class ApplyEdits(_DiffusionMixin, Node):
    """Each parsed edit on its target's mask: remove (OpenCV or diffusion), recolor (OKLCH), replace (diffusion)."""

    name = "apply_edits"
    reads = {"image": np.ndarray, "edits": list, "detections": Detections}
    writes = {"edited_image": np.ndarray}
    params = {
        **DIFFUSION_PARAMS,
        "remove_with": Param("opencv", str, "opencv (offline, fast) or diffusion (needs model)", choices=("opencv", "diffusion")),
        "remove_method": Param("telea", str, "OpenCV inpainting: telea or ns (Navier-Stokes)", choices=("telea", "ns")),
        "remove_radius": Param(5, int, "OpenCV inpainting radius in pixels"),
        "background_prompt": Param("background, empty scene", str, "what diffusion paints where an object is removed"),
        "prompt": Param("{value}", str, "prompt for a replace edit; {value} is the new object, {target} the old"),
        "dilate": Param(6, int, "grow each mask by this many pixels first (edges, shadows; recolor grows by a third)"),
        "feather": Param(3, int, "blend over this many pixels inside the grown mask's edge"),
        "recolor_strength": Param(1.0, float, "1: the full new colour; less blends with the original"),
        "missing": Param("error", str, "a target with no detection: error, or skip the edit (noted)", choices=("error", "skip")),
    }

    def setup(self, ctx) -> None:
        self._models, self._pipeline = ctx.models, None
        if self.remove_with == "diffusion" and self.model is None:
            raise ValueError("apply_edits: remove_with is diffusion but no model is set (set model to a Stable "
                             "Diffusion inpainting hub id or folder, or use remove_with: opencv)")

    def process(self, sample: Sample) -> Sample:
        from ..edit.local import recolor, remove_object

        edits = [edit_from_dict(e) for e in sample.edits]
        dets = sample.detections
        if dets is None or not dets.has_masks:
            raise ValueError("apply_edits needs masks: put a segment node (segment_boxes or segment_points) before it")
        replacing = [e for e in edits if e.action == "replace"]
        if replacing and self.model is None:  # before any work: say so, not after the other edits
            e = replacing[0]
            raise ValueError(f"cannot replace {e.target!r} with {e.value!r}: replacing an object needs a diffusion "
                             "model; set apply_edits' model (grounded edit --inpaint-model) to a Stable Diffusion "
                             "inpainting hub id or folder (remove and recolor work without one)")
        found = match_targets(sample.edits, dets)
        image = sample.image
        report = []
        for k, (edit, index) in enumerate(zip(edits, found)):
            if index is None:
                labels = ", ".join(dict.fromkeys(dets.labels or [])) or "nothing"
                empty = dets.has_masks and len(dets) and not (dets.area > 0).any()
                message = (f"no detection for the target {edit.target!r} (found: {labels}"
                           + ("; SAM found no pixels in any of their boxes)" if empty else ")"))
                if self.missing == "error":
                    raise ValueError(f"cannot {edit.action} {edit.target!r}: {message}")
                sample.note(f"skipped '{edit}': {message}")
                report.append({**edit.as_dict(), "detection": None})
                continue
            mask = dets.mask_of(index)
            if edit.action == "remove":
                if self.remove_with == "diffusion":
                    image = self._inpaint(image, mask, self.background_prompt)
                else:
                    image = remove_object(image, mask, self.remove_method, self.remove_radius, self.dilate, self.feather)
            elif edit.action == "recolor":
                image = recolor(image, mask, edit.value, self.recolor_strength, self.dilate // 3, self.feather)
            else:
                image = self._inpaint(image, mask, self.prompt.format(value=edit.value, target=edit.target))
            report.append({**edit.as_dict(), "detection": int(index), "mask_pixels": int(mask.sum())})
        sample.edited_image = image
        sample.meta["edits"] = report
        sample.set("edit_detections", [r["detection"] for r in report])
        return sample

    def close(self) -> None:
        self._pipeline = None


class Inpaint(_DiffusionMixin, Node):
    """Stable Diffusion inpainting of one prompt into the union of the detections' masks."""

    name = "inpaint"
    reads = {"image": np.ndarray, "detections": Detections}
    writes = {"edited_image": np.ndarray}
    params = {**DIFFUSION_PARAMS,
              "model": Param(None, str, "Stable Diffusion inpainting model (SD 1.x/2.x or SDXL): hub id or folder"),
              "prompt": Param(None, str, "what to paint into the masks (null: the item's text)"),
              "dilate": Param(8, int, "grow the mask by this many pixels first"),
              "feather": Param(4, int, "blend over this many pixels inside the grown mask's edge")}

    def setup(self, ctx) -> None:
        if self.model is None:
            raise ValueError("inpaint: set model to a Stable Diffusion inpainting hub id or folder")
        self._models, self._pipeline = ctx.models, None

    def process(self, sample: Sample) -> Sample:
        dets = sample.detections
        if dets is None or not dets.has_masks or not len(dets):
            raise ValueError("inpaint: the item has no masks to paint into")
        prompt = self.prompt or sample.text
        if not prompt:
            raise ValueError("inpaint: no prompt (set prompt, or give the item a text)")
        sample.edited_image = self._inpaint(sample.image, dets.mask.any(axis=0), prompt)
        return sample

    def close(self) -> None:
        self._pipeline = None


class TargetBoxes(Node):
    """Boxes given by hand as the edits' targets (one per edit, in order), for segment_boxes."""

    name = "target_boxes"
    reads = {"image": np.ndarray, "edits": list}
    writes = {"detections": Detections}
    params = {"boxes": Param(None, list, "[[x0, y0, x1, y1], ...] one per edit (else the item's boxes field)")}

    def process(self, sample: Sample) -> Sample:
        boxes = self.boxes if self.boxes is not None else sample.get("boxes")
        if boxes is None:
            raise ValueError("target_boxes: give boxes (the node's parameter or the item's boxes field)")
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        edits = sample.edits or []
        if len(boxes) != len(edits):
            raise ValueError(f"target_boxes: {len(boxes)} boxes for {len(edits)} edits; give one box per edit, in order")
        sample.detections = Detections(boxes, labels=[e["target"] for e in edits], data={"edit": list(range(len(edits)))},
                                       image_size=sample.image_size)
        return sample


class WriteEdited(FileWriter):
    """The edited image (edited/<id>.png) and each edit's mask (edit_masks/<id>_<k>.png)."""

    name = "write_edited"
    reads = {"edited_image": np.ndarray}
    params = {"folder": Param("edited", str, "folder for the edited images"),
              "masks_folder": Param("edit_masks", str, "folder for each edit's mask (empty string: none)")}

    def process(self, sample: Sample) -> None:
        from ..io.results import atomic_save_image

        image_id = sample.image_id or "image"
        path = self.out / self.folder / f"{image_id}.png"
        atomic_save_image(path, sample.edited_image)
        self._record(sample, path)
        chosen = sample.get("edit_detections") or []
        if self.masks_folder and sample.detections is not None and sample.detections.has_masks:
            for k, index in enumerate(chosen):
                if index is None:
                    continue
                mask_path = self.out / self.masks_folder / f"{image_id}_{k}.png"
                atomic_save_image(mask_path, sample.detections.mask_of(index).astype(np.uint8) * 255)
                sample.outputs[f"{self.id}.mask{k}"] = mask_path.relative_to(self.out).as_posix()

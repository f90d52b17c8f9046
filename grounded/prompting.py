"""The steps text-to-mask is built from, each over `Detections` (see `grounded.text_to_mask` for
the whole, and `grounded.nodes.text_to_mask` / `grounded.nodes.clip` for the nodes):

- `boxes_to_masks`: SAM masks for every box of an image, in one decoder call.
- `rank_by_clip`: masks ranked by the CLIP similarity of each mask's masked crop to a text.
- `refine_with_clicks`: clicks ([x, y] or [x, y, label], label 1 object / 0 background, in pixels)
  correct the masks: each detection is prompted again with its box (grown to take in its positive
  clicks) plus the clicks that fall in it (a click inside no box goes to the nearest).
- `native_masks`: the SAM paper's text prompt, the CLIP text embedding projected to one sparse
  prompt token by a learned projection (`grounded.sam.text_prompt`), clicks in the same call.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .clip.model import check_text
from .types import Detections

NO_PROJECTION = ("native text mode needs text-prompt projection weights (a folder with text_prompt.safetensors "
                 "and text_prompt.json): pass projection=PATH; train them with `grounded train` (text_prompt: true), "
                 "or use mode 'grounded' or 'clip'")


def parse_clicks(points: Optional[Sequence]) -> Tuple[np.ndarray, np.ndarray]:
    """[[x, y] or [x, y, label], ...] -> (coords Kx2 float, labels K int); None -> empty."""
    if points is None:
        return np.zeros((0, 2)), np.zeros((0,), np.int64)
    coords, labels = [], []
    for p in points:
        if not isinstance(p, (list, tuple, np.ndarray)) or len(p) not in (2, 3):
            raise ValueError(f"a click is [x, y] or [x, y, label] (label 1 object, 0 background), got {p!r}")
        label = int(p[2]) if len(p) == 3 else 1
        if label not in (0, 1):
            raise ValueError(f"a click's label is 1 (object) or 0 (background), got {label} in {p!r}")
        coords.append((float(p[0]), float(p[1])))
        labels.append(label)
    return np.array(coords, np.float64).reshape(-1, 2), np.array(labels, np.int64)


def check_clicks_inside(coords: np.ndarray, image: np.ndarray) -> None:
    """A ValueError when a click (Kx2 pixel coordinates) lies outside the image."""
    height, width = image.shape[:2]
    if ((coords < 0) | (coords >= [width, height])).any():
        raise ValueError(f"clicks {coords.tolist()} must lie inside the {width}x{height} image")


def clicks_per_target(coords: np.ndarray, labels: np.ndarray, owners: np.ndarray) -> Tuple[list, np.ndarray, np.ndarray]:
    """The detections that own clicks (`owners[i]` owns click i), sorted, and their clicks as one
    prompt row each: N x K x 2 coordinates and N x K labels, -1 padding (SAM's "no point")."""
    targets = sorted(set(owners.tolist()))
    k = max(int((owners == t).sum()) for t in targets)
    prompt_coords = np.zeros((len(targets), k, 2))
    prompt_labels = -np.ones((len(targets), k), np.int64)
    for row, t in enumerate(targets):
        mine = owners == t
        prompt_coords[row, :mine.sum()], prompt_labels[row, :mine.sum()] = coords[mine], labels[mine]
    return targets, prompt_coords, prompt_labels


def boxes_to_masks(predictor, image: np.ndarray, dets: Detections, multimask: bool = False) -> Detections:
    """SAM masks for every box of `dets`, in one decoder call; `mask_score` is SAM's predicted IoU."""
    if not len(dets):
        return dets.replace(rles=[], image_size=image.shape[:2])
    height, width = image.shape[:2]
    boxes = np.clip(dets.xyxy, 0, [width, height, width, height])
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_many(boxes=boxes, multimask_output=multimask)
    best = scores.argmax(axis=1)
    rows = np.arange(len(best))
    return dets.replace(mask=masks[rows, best], data=dict(dets.data, mask_score=scores[rows, best].astype(np.float32)))


def rank_by_clip(clip, image: np.ndarray, dets: Detections, text: str, top_k: Optional[int] = 1,
                 min_score: Optional[float] = None, **crop_kwargs: Any) -> Detections:
    """`dets` (with masks) scored by CLIP against `text` (data["clip_score"], cosine similarity),
    best first, the best `top_k` kept (None: all) and those below `min_score` dropped."""
    text = check_text(text)
    if not len(dets):
        return dets
    scores = clip.score_masks(image, dets.mask, [text], **crop_kwargs)[:, 0]
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    if min_score is not None:
        order = order[scores[order] >= min_score]
    ranked = dets[order]
    return ranked.replace(labels=[text] * len(ranked), data=dict(ranked.data, clip_score=scores[order].astype(np.float32)))


def refine_with_clicks(predictor, image: np.ndarray, dets: Detections, points: Optional[Sequence]) -> Detections:
    """Each detection prompted again with its box and its clicks (see the module docstring); the
    detections that get clicks are re-predicted together in one decoder call."""
    coords, labels = parse_clicks(points)
    if not len(coords) or not len(dets):
        return dets
    check_clicks_inside(coords, image)
    height, width = image.shape[:2]
    boxes = dets.xyxy.astype(np.float64)
    owner = np.array([_owner(boxes, xy) for xy in coords])
    targets, prompt_coords, prompt_labels = clicks_per_target(coords, labels, owner)
    prompt_boxes = np.zeros((len(targets), 4))
    for row, t in enumerate(targets):
        mine = owner == t
        box = boxes[t].copy()
        positive = coords[mine & (labels == 1)]
        current = dets.mask_of(t)
        outside = [xy for xy in positive if not current[min(int(xy[1]), height - 1), min(int(xy[0]), width - 1)]]
        if outside:
            # A positive click outside the mask asks for more than the mask holds: the box grows to
            # take it in, and a point deep inside the current mask keeps what was already there.
            box[:2] = np.minimum(box[:2], positive.min(axis=0))
            box[2:] = np.maximum(box[2:], positive.max(axis=0) + 1)
            anchor = interior_point(current)
            if anchor is not None:
                prompt_coords, prompt_labels = _with_point(prompt_coords, prompt_labels, row, anchor)
        prompt_boxes[row] = np.clip(box, 0, [width, height, width, height])
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_many(point_coords=prompt_coords, point_labels=prompt_labels,
                                              boxes=prompt_boxes, multimask_output=False)
    all_masks = dets.mask.copy()
    mask_score = np.asarray(dets.data.get("mask_score", np.full(len(dets), np.nan)), np.float32).copy()
    for row, t in enumerate(targets):
        all_masks[t] = masks[row, 0]
        mask_score[t] = scores[row, 0]
    refined = np.zeros(len(dets), bool)
    refined[targets] = True
    boxes_out = np.array([_mask_box(m, b) for m, b in zip(all_masks, dets.xyxy)], np.float32).reshape(-1, 4)
    return Detections(boxes_out, mask=all_masks, scores=dets.scores, class_id=dets.class_id, labels=dets.labels,
                      data=dict(dets.data, mask_score=mask_score, refined=refined), image_size=(height, width))


def _with_point(coords: np.ndarray, labels: np.ndarray, row: int, xy) -> tuple:
    """Add a positive point to prompt `row` (widening the padded arrays when that row is full)."""
    free = np.flatnonzero(labels[row] == -1)
    if not len(free):
        coords = np.concatenate([coords, np.zeros((len(coords), 1, 2))], axis=1)
        labels = np.concatenate([labels, -np.ones((len(labels), 1), np.int64)], axis=1)
        free = [labels.shape[1] - 1]
    coords[row, free[0]] = xy
    labels[row, free[0]] = 1
    return coords, labels


def interior_point(mask: np.ndarray):
    """(x, y) of a pixel deep inside the mask (the last to survive repeated erosion); None if empty."""
    current = np.asarray(mask, bool)
    if not current.any():
        return None
    while True:
        eroded = current.copy()
        eroded[1:] &= current[:-1]
        eroded[:-1] &= current[1:]
        eroded[:, 1:] &= current[:, :-1]
        eroded[:, :-1] &= current[:, 1:]
        if not eroded.any():
            ys, xs = np.nonzero(current)
            mid = len(xs) // 2
            return float(xs[mid]), float(ys[mid])
        current = eroded


def _owner(boxes: np.ndarray, xy: np.ndarray) -> int:
    inside = (boxes[:, 0] <= xy[0]) & (xy[0] <= boxes[:, 2]) & (boxes[:, 1] <= xy[1]) & (xy[1] <= boxes[:, 3])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = np.linalg.norm(centres - xy, axis=1)
    if inside.any():
        return int(np.flatnonzero(inside)[np.argmin(dist[inside])])
    return int(np.argmin(dist))


def _mask_box(mask: np.ndarray, fallback) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return np.asarray(fallback, np.float32)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def native_masks(predictor, clip, projection, image: np.ndarray, text: str,
                 points: Optional[Sequence] = None) -> Detections:
    """SAM's own text prompt: CLIP text embedding -> projection -> sparse token (+ clicks) -> the
    best of SAM's three masks."""
    from .sam.text_prompt import predict_from_text

    text = check_text(text)
    if projection is None:
        raise ValueError(NO_PROJECTION)
    coords, labels = parse_clicks(points)
    embedding = clip.encode_text([text])[0]
    predictor.set_image(image)
    kwargs = dict(point_coords=coords, point_labels=labels) if len(coords) else {}
    masks, scores, _ = predict_from_text(predictor, projection, embedding, multimask_output=True, **kwargs)
    best = int(np.argmax(scores))
    mask = masks[best][None]
    return Detections(np.array([_mask_box(mask[0], [0, 0, 0, 0])]), mask=mask,
                      scores=np.array([scores[best]], np.float32), labels=[text],
                      data={"mask_score": np.array([scores[best]], np.float32)}, image_size=image.shape[:2])


def load_projection(projection: Any, device: str = "cpu"):
    """A TextPromptProjection from a folder (or the object itself); None -> the clear error."""
    if projection is None:
        raise ValueError(NO_PROJECTION)
    if isinstance(projection, str) or hasattr(projection, "__fspath__"):
        from .sam.text_prompt import TextPromptProjection

        return TextPromptProjection.from_pretrained(projection, device=device)
    return projection

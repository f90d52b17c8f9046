"""The simulated annotator: the standard stand-in for a person in interactive segmentation, with the
click rule of `grounded eval`'s `points` protocol (grounded.eval.tasks.points.click_until: the first
click at the object's most interior pixel, each next one at the most interior pixel of the largest
error region) until the mask reaches IoU 0.9 with the ground truth or 20 prompts, then it accepts.

Stage manual: every ground-truth object is clicked from scratch. Stage semi: the pre-filled masks
are matched to the ground truth (greedily by IoU, at least 0.5); a match of IoU >= 0.9 is accepted as
it is (no clicks), a poorer match is corrected (its box re-prompts SAM, as the page's "correct"
does, then clicks), an unmatched pre-filled mask is deleted, and every object without a match is
clicked from scratch. Everything goes through the annotation store, as the page's saves do, so the
log holds the same lines (seconds: null, a simulation has no person's time).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

ACCEPT_IOU = 0.9
MAX_CLICKS = 20
MATCH_IOU = 0.5


def click_objects(segmenter, truths: np.ndarray, boxes: Optional[np.ndarray] = None, stop_iou: float = ACCEPT_IOU,
                  clicks: int = MAX_CLICKS):
    """Masks for `truths` (N x H x W) by the points protocol's clicks, stopping at `stop_iou`: from a
    centre click (multimask, top score kept) or, with `boxes` (N x 4 xyxy), from the box alone."""
    from ..eval.masks import center_point
    from ..eval.tasks.points import click_until

    if boxes is None:
        first = np.array([center_point(m) for m in truths])
        masks, scores, low = segmenter.predict(coords=first[:, None], labels=np.ones((len(truths), 1), np.int64),
                                               multimask=True)
    else:
        first = None
        masks, scores, low = segmenter.predict(boxes=boxes, multimask=False)
    return click_until(segmenter, truths, masks, scores, low, first, clicks, stop_iou=stop_iou, boxes=boxes)


def _log(points, box, score) -> dict:
    return {"clicks": [[x, y, label, None] for x, y, label in points], "box": box, "seconds": None,
            "num_clicks": len(points) + (1 if box is not None else 0), "candidate": 0, "score": float(score),
            "simulated": True}


def label_manual(segmenter, store, key: str, image: np.ndarray, truths: np.ndarray, label: str = "object") -> int:
    """Stage manual on one image: every object clicked; returns the masks saved."""
    if not len(truths):
        return 0
    segmenter.set_image(image)
    result = click_objects(segmenter, truths)
    version = store.get(key)["version"]
    logs = [_log(points, None, score) for points, score in zip(result.points, result.scores)]
    store.add_many(key, version, result.masks, label, result.scores, logs)
    return len(truths)


def match(proposals: np.ndarray, truths: np.ndarray, at_least: float = MATCH_IOU) -> Dict[int, tuple]:
    """Greedy one-to-one matching by IoU: {proposal index: (truth index, IoU)} for pairs >= at_least."""
    from ..eval.masks import encode, iou_matrix

    if not len(proposals) or not len(truths):
        return {}
    ious = iou_matrix(encode(proposals), encode(truths))
    pairs = {}
    used_p, used_t = set(), set()
    for flat in np.argsort(-ious, axis=None):
        p, t = np.unravel_index(flat, ious.shape)
        if ious[p, t] < at_least:
            break
        if p in used_p or t in used_t:
            continue
        pairs[int(p)] = (int(t), float(ious[p, t]))
        used_p.add(p)
        used_t.add(t)
    return pairs


def semi_decisions(prefilled: List[dict], truths: np.ndarray) -> dict:
    """What the simulated annotator does with an image's pre-filled masks: ids to accept, to correct
    (id -> truth index), to delete, and the truth indices left to click from scratch."""
    from ..rle import decode_rle

    proposals = np.stack([decode_rle(a["segmentation"]) for a in prefilled]) if prefilled else np.zeros((0,) + truths.shape[1:], bool)
    pairs = match(proposals, truths)
    accept, correct, delete = [], {}, []
    for i, a in enumerate(prefilled):
        if i not in pairs:
            delete.append(a["id"])
        elif pairs[i][1] >= ACCEPT_IOU:
            accept.append(a["id"])
        else:
            correct[a["id"]] = pairs[i][0]
    matched = {t for t, _ in pairs.values()}
    return {"accept": accept, "correct": correct, "delete": delete,
            "add": [t for t in range(len(truths)) if t not in matched]}


def label_semi(segmenter, store, key: str, image: np.ndarray, truths: np.ndarray, label: str = "object") -> dict:
    """Stage semi on one image (its pre-filled masks are in the store); returns the decision counts.
    Masks added from scratch get `label`; accepted and corrected ones keep the pre-fill's."""
    state = store.get(key)
    prefilled = [a for a in state["annotations"] if a.get("prefill")]
    plan = semi_decisions(prefilled, truths)
    version = state["version"]
    for annotation_id in plan["accept"]:
        version = store.confirm(key, version, annotation_id)["version"]
    for annotation_id in plan["delete"]:
        version = store.delete(key, version, annotation_id)["version"]
    if plan["correct"] or plan["add"]:
        segmenter.set_image(image)
    if plan["correct"]:
        ids = list(plan["correct"])
        by_id = {a["id"]: a for a in prefilled}
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (by_id[i]["bbox"] for i in ids)], np.float64)
        result = click_objects(segmenter, truths[[plan["correct"][i] for i in ids]], boxes=boxes)
        for j, annotation_id in enumerate(ids):
            log = _log(result.points[j], boxes[j].tolist(), result.scores[j])
            # A correction keeps the corrected mask's label (a text pre-fill's category).
            version = store.add(key, version, result.masks[j], by_id[annotation_id]["label"], result.scores[j], log,
                                replaces=annotation_id)["version"]
    if plan["add"]:
        result = click_objects(segmenter, truths[plan["add"]])
        logs = [_log(points, None, score) for points, score in zip(result.points, result.scores)]
        store.add_many(key, version, result.masks, label, result.scores, logs)
    return {k: len(v) for k, v in plan.items()}

"""Concept segmentation: images + noun phrases (one or many per image) + optional exemplar boxes ->
every instance of each concept, as `Detections` (boxes, RLE masks, scores, the phrase as label and
its index in the image's prompt list as class id).

    sam3 = load_sam3("facebook/sam3")
    dets = segment_concepts(sam3, [image], [["dog", "red car"]])[0]
    dets = segment_concepts(sam3, [a, b], [["dog"], ["cat", "tree", Concept("mug", boxes=[[10, 20, 80, 90]])]])

The images go through the vision encoder once each, `image_batch_size` at a time. Every
(image, concept) pair then runs the rest of `Sam3Model` (DETR encoder and decoder, mask decoder)
with that image's features as `vision_embeds`, `batch_size` pairs per call, so N phrases on one
image cost one encoding and N prompt passes. (transformers takes `vision_embeds` with the batch of
the prompts: one image with three phrases, called naively, is a shape error; here each pair's rows
are the image's features, expanded or gathered.) Pairs are batched by their number of exemplar
boxes, so no prompt is padded and a batch gives what one-by-one calls give.

Post-processing is transformers' `post_process_instance_segmentation`: score = sigmoid(logit) x
sigmoid(presence logit), kept above `threshold`; boxes scaled to the image; mask probabilities
resized bilinearly to the image and kept above `mask_threshold`. Instances come in query order. An
image where nothing passes gets an empty `Detections` (with masks), not an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..types import Detections

# The text transformers' Sam3Processor gives a prompt of exemplar boxes only.
VISUAL = "visual"
# Kept masks resized to the image at a time (each is H x W float32 while resized).
MASKS_PER_RESIZE = 16


@dataclass(frozen=True)
class Concept:
    """A concept prompt: a noun phrase, exemplar boxes [x0, y0, x1, y1] in pixels (label 1 a
    positive example, 0 a negative one), or both. Exemplars alone are prompted as "visual"."""

    text: Optional[str] = None
    boxes: Tuple[Tuple[float, float, float, float], ...] = ()
    labels: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        boxes = tuple(tuple(float(v) for v in box) for box in self.boxes)
        labels = tuple(int(v) for v in self.labels) if self.labels else (1,) * len(boxes)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)

    @property
    def label(self) -> str:
        return self.text if self.text is not None else VISUAL


def check_concept(concept: Any, image_size: Tuple[int, int], where: str) -> Concept:
    """A Concept (from a Concept or a phrase), its phrase and boxes checked against the image."""
    from ..clip.model import check_text

    if isinstance(concept, str):
        concept = Concept(concept)
    if not isinstance(concept, Concept):
        raise ValueError(f"{where}: a concept is a phrase or a grounded.sam3.Concept, got {type(concept).__name__}")
    text = None if concept.text is None else " ".join(check_text(concept.text, f"{where}: the phrase").split())
    if text is None and not concept.boxes:
        raise ValueError(f"{where}: a concept needs a phrase, exemplar boxes, or both")
    if len(concept.labels) != len(concept.boxes):
        raise ValueError(f"{where}: {len(concept.labels)} exemplar labels for {len(concept.boxes)} boxes")
    height, width = image_size
    for box, label in zip(concept.boxes, concept.labels):
        check_exemplar(box, label, width, height, where)
    return Concept(text, concept.boxes, concept.labels)


def check_exemplar(box: Sequence[float], label: int, width: int, height: int, where: str) -> None:
    """An exemplar box [x0, y0, x1, y1] inside the width x height image, with some area, label 0 or 1."""
    if len(box) != 4 or not np.isfinite(box).all():
        raise ValueError(f"{where}: an exemplar box is [x0, y0, x1, y1] in pixels (finite numbers), got {list(box)}")
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise ValueError(f"{where}: exemplar box {list(box)} has x1 < x0 or y1 < y0; write it as [x0, y0, x1, y1]")
    if x1 == x0 or y1 == y0:
        raise ValueError(f"{where}: exemplar box {list(box)} has no area")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"{where}: exemplar box {list(box)} lies outside the {width}x{height} image "
                         f"(x in [0, {width}], y in [0, {height}])")
    if label not in (0, 1):
        raise ValueError(f"{where}: an exemplar's label is 1 (positive) or 0 (negative), got {label}")


def image_concepts(prompts: Sequence, images: Sequence[np.ndarray]) -> List[List[Concept]]:
    """Per image, its concepts checked: `prompts` has one entry per image, a phrase, a Concept or a
    list of those (an empty list: nothing to find there)."""
    if isinstance(prompts, (str, Concept)) or len(prompts) != len(images):
        count = 1 if isinstance(prompts, (str, Concept)) else len(prompts)
        raise ValueError(f"{count} prompt entries for {len(images)} images: give one entry per image "
                         "(a phrase, a Concept, or a list of them)")
    out = []
    for i, (entry, image) in enumerate(zip(prompts, images)):
        entries = [entry] if isinstance(entry, (str, Concept)) else list(entry)
        out.append([check_concept(c, image.shape[:2], f"image {i}, concept {j}") for j, c in enumerate(entries)])
    return out


def segment_concepts(sam3, images: Sequence, prompts: Sequence, threshold: float = 0.5, mask_threshold: float = 0.5,
                     batch_size: int = 4, image_batch_size: int = 4) -> List[Detections]:
    """Every instance of each image's concepts (see the module docstring): `images` HxWx3 uint8 RGB
    arrays or anything `grounded.io.load_image` reads; `prompts` one entry per image."""
    from ..io.image import load_image

    if not 0 <= threshold <= 1 or not 0 <= mask_threshold <= 1:
        raise ValueError(f"threshold ({threshold}) and mask_threshold ({mask_threshold}) are probabilities in [0, 1]")
    images = [load_image(im) for im in images]
    concepts = image_concepts(prompts, images)
    pairs = [(i, j) for i, cs in enumerate(concepts) for j in range(len(cs))]
    features = sam3.features([images[i] for i in sorted({i for i, _ in pairs})], batch_size=image_batch_size)
    features = dict(zip(sorted({i for i, _ in pairs}), features))
    found: Dict[Tuple[int, int], Detections] = {}
    groups: Dict[int, List[Tuple[int, int]]] = {}
    for i, j in pairs:
        groups.setdefault(len(concepts[i][j].boxes), []).append((i, j))
    for group in groups.values():
        for start in range(0, len(group), max(1, batch_size)):
            chunk = group[start:start + max(1, batch_size)]
            outputs = run_prompts(sam3, [features[i] for i, _ in chunk], [concepts[i][j] for i, j in chunk])
            for row, (i, j) in enumerate(chunk):
                found[(i, j)] = instances(outputs, row, images[i].shape[:2], concepts[i][j].label, j,
                                          threshold, mask_threshold)
    results = []
    for i, image in enumerate(images):
        parts = [found[(i, j)] for j in range(len(concepts[i]))]
        results.append(Detections.merge(parts) if parts else empty(image.shape[:2]))
    return results


@torch.no_grad()
def run_prompts(sam3, features: Sequence, concepts: Sequence[Concept]):
    """`Sam3Model` on one (image features, concept) pair per row, every concept with as many boxes."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    embeds, mask = sam3.text_embeddings([c.label for c in concepts])
    boxes = labels = None
    if concepts[0].boxes:
        encoded = [sam3.processor(original_sizes=[list(f.original_size)], input_boxes=[list(map(list, c.boxes))],
                                  input_boxes_labels=[list(c.labels)], return_tensors="pt")
                   for f, c in zip(features, concepts)]
        boxes = torch.cat([e["input_boxes"] for e in encoded]).to(sam3.device, sam3.dtype)
        labels = torch.cat([e["input_boxes_labels"] for e in encoded]).to(sam3.device)
    return sam3.detector(vision_embeds=batched_vision(features), text_embeds=BaseModelOutputWithPooling(
        pooler_output=embeds), attention_mask=mask, input_boxes=boxes, input_boxes_labels=labels)


def batched_vision(features: Sequence):
    """The vision output of a batch of rows: one image's features expanded (no copy) when every row
    is the same image, else the rows' features stacked."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    same = all(f is features[0] for f in features)

    def levels(name: str) -> tuple:
        rows = [getattr(f.vision, name) for f in features]
        if same:
            return tuple(t.expand(len(rows), *t.shape[1:]) for t in rows[0])
        return tuple(torch.cat(level) for level in zip(*rows))

    return Sam3VisionEncoderOutput(fpn_hidden_states=levels("fpn_hidden_states"),
                                   fpn_position_encoding=levels("fpn_position_encoding"))


def instances(outputs, row: int, image_size: Tuple[int, int], label: str, class_id: int, threshold: float,
              mask_threshold: float) -> Detections:
    """Row `row` of a `Sam3Model` output as Detections in an image of `image_size` (H, W)."""
    from ..rle import encode_masks

    scores = outputs.pred_logits[row].float().sigmoid()
    if outputs.presence_logits is not None:
        scores = scores * outputs.presence_logits[row].float().sigmoid()
    keep = scores > threshold
    if not keep.any():
        return empty(image_size)
    height, width = image_size
    boxes = outputs.pred_boxes[row][keep].float() * torch.tensor([width, height, width, height], device=scores.device)
    probabilities = outputs.pred_masks[row][keep].float().sigmoid()
    rles = []
    for start in range(0, len(probabilities), MASKS_PER_RESIZE):
        chunk = probabilities[start:start + MASKS_PER_RESIZE][None]
        resized = torch.nn.functional.interpolate(chunk, size=image_size, mode="bilinear", align_corners=False)[0]
        rles += encode_masks((resized > mask_threshold).cpu().numpy())
    n = len(rles)
    return Detections(boxes.cpu().numpy(), rles=rles, scores=scores[keep].cpu().numpy(),
                      class_id=np.full(n, class_id), labels=[label] * n, image_size=image_size)


def empty(image_size: Tuple[int, int]) -> Detections:
    return Detections(np.zeros((0, 4), np.float32), rles=[], scores=[], class_id=[], labels=[], image_size=image_size)

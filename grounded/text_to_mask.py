"""Text to mask: one entry point, four modes, and point clicks that correct the result.

    from grounded.text_to_mask import segment_text
    dets = segment_text(image, "the dog")                                   # grounded: Grounding DINO + SAM
    dets = segment_text(image, "a red circle", mode="clip", clip="path/to/clip")
    dets = segment_text(image, "the dog", mode="native", clip=..., projection="runs/text/projection")
    dets = segment_text(image, "dog. red car.", mode="sam3")                # SAM 3: every instance of each phrase
    dets = segment_text(image, "the dog", points=[[120, 80, 0]])           # text + a negative click

- `grounded`: Grounding DINO boxes for the text, then SAM with all boxes of the image in one
  decoder call (`SamPredictor.predict_many`).
- `clip`: SAM's automatic masks, ranked by the CLIP similarity of each mask's masked crop to the
  text (`grounded.clip`); the best `top_k` are kept.
- `native`: the SAM paper's text prompt: the CLIP text embedding, projected to one sparse prompt
  token by a learned projection (`grounded.sam.text_prompt`, trained by `grounded train`).
- `sam3`: SAM 3's concept segmentation (`grounded.sam3`, model `sam3`, default facebook/sam3):
  every instance of each phrase of the text ("dog. red car." is two), scored above `sam3_threshold`.

Clicks ([x, y] or [x, y, label], label 1 object / 0 background, in pixels) refine the text's
result: each detection is prompted again with its box (grown to take in its positive clicks) plus
the clicks that fall in it (a click inside no box goes to the nearest); in `native` mode the clicks
go into the same decoder call as the text token; in `sam3` mode each clicked result is prompted to
SAM 3's tracker with its own mask and its clicks (`grounded.sam3.correct_with_clicks`). The result
is a `Detections` with masks; an image where nothing matches gives an empty one, not an error. The
same steps (`grounded.prompting`) are the nodes of pipelines/text_to_mask*.yaml (`detect` |
`segment_boxes` | `refine_points`, `segment_auto` | `clip_score` | `refine_points`,
`segment_text_native`, `segment_concepts`), and models named here load through the nodes' model
kinds, so a `ModelCache` shared with those pipelines loads each once.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from .clip.model import check_text
from .prompting import (NO_PROJECTION, boxes_to_masks, load_projection, native_masks, parse_clicks, rank_by_clip,
                        refine_with_clicks)
from .types import Detections

MODES = ("grounded", "clip", "native", "sam3")


def segment_text(image: Any, text: str, mode: str = "grounded", points: Optional[Sequence] = None, *,
                 sam: Any = "mobile_sam", detector: Any = "IDEA-Research/grounding-dino-tiny", clip: Any = None,
                 clip_pretrained: Optional[str] = None, projection: Any = None, box_threshold: float = 0.3,
                 text_threshold: float = 0.25, top_k: Optional[int] = 1, points_per_side: int = 16,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95, sam3: Any = "facebook/sam3",
                 sam3_threshold: float = 0.5, models=None, device: str = "auto") -> Detections:
    """Masks for `text` in `image` (HxWx3 uint8 RGB or a path), refined by `points` (see the module
    docstring). `sam`, `detector`, `clip` and `projection` are names/paths (loaded through `models`,
    a ModelCache, or a new one) or loaded objects (a SamPredictor, a `.detect(...)` detector, a
    ClipModel, a TextPromptProjection, a `grounded.sam3.Sam3`)."""
    from .io.image import load_image
    from .nodes.detect import detector_key
    from .nodes.segment import sam_predictor
    from .pipeline.models import ModelCache, resolve_device

    if mode not in MODES:
        raise ValueError(f"unknown text-to-mask mode {mode!r}; use one of {list(MODES)}")
    text = check_text(text)
    parse_clicks(points)  # bad clicks fail before any model loads
    if mode == "native" and projection is None:
        raise ValueError(NO_PROJECTION)
    image = load_image(image)
    own = models is None
    models = ModelCache() if own else models
    device = resolve_device(device)
    try:
        if mode == "sam3":
            return _sam3_masks(models, sam3, device, image, text, points, sam3_threshold)
        predictor = sam_predictor(models, sam, device) if isinstance(sam, str) else sam
        if mode == "native":
            proj = load_projection(projection, device)
            return native_masks(predictor, _clip(models, clip, clip_pretrained, device), proj, image, text, points)
        if mode == "grounded":
            if isinstance(detector, str):
                detector = models.get("grounding_dino", detector_key(detector), device)
            dets = detector.detect([image], text, box_threshold=box_threshold, text_threshold=text_threshold)[0]
            dets = boxes_to_masks(predictor, image, dets)
        else:
            from .sam2.automatic import mask_generator

            clip_model = _clip(models, clip, clip_pretrained, device)  # before the slow part: a missing CLIP fails first
            generator = mask_generator(predictor.model, points_per_side=points_per_side,
                                       pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                                       output_mode="coco_rle")
            generator.predictor = predictor
            dets = Detections.from_sam_records(generator.generate(image), image_size=image.shape[:2])
            dets = rank_by_clip(clip_model, image, dets, text, top_k=top_k)
        return refine_with_clicks(predictor, image, dets, points)
    finally:
        if own:
            models.close()


def _sam3_masks(models, sam3: Any, device: str, image, text: str, points, threshold: float) -> Detections:
    from .nodes.sam3 import phrases_of, sam3_model  # also registers the "sam3" model kind
    from .sam3 import correct_with_clicks

    model = sam3_model(models, sam3, device) if isinstance(sam3, str) else sam3
    dets = model.segment([image], [phrases_of(text)], threshold=threshold)[0]
    return correct_with_clicks(model.predictor(), image, dets, points) if points else dets


def _clip(models, clip: Any, pretrained: Optional[str], device: str):
    if clip is None:
        raise ValueError("this mode needs a CLIP model: clip=<open_clip folder, 'hf-hub:org/name', transformers id "
                         "or folder> (with clip_pretrained=<tag or file> for an open_clip architecture name)")
    if isinstance(clip, str):
        from .nodes.clip import clip_key  # also registers the "clip" model kind

        return models.get("clip", clip_key(clip, pretrained), device)
    return clip

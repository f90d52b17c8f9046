"""The detector interface both Grounding DINO backends implement, and the post-processing they share.

A backend prepares pixels its own way (`prepare`) and runs its network (`forward`): logits over
256 text positions and normalized cxcywh boxes per query. Everything after that is here and the
same for both: a query is kept when its best token probability is above `box_threshold` (its
score), boxes go to image pixels (x0, y0, x1, y1), each kept query gets its prompt class
(`grounded.detect.phrases`), and optional NMS runs last."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..detections import Detections
from .phrases import Prompt, assign, parse_prompt, token_classes

Texts = Union[str, Sequence[str]]
MAX_TEXT_TOKENS = 256  # text positions Grounding DINO scores (both implementations)


class Detector:
    """Text -> boxes. Subclasses set `backend`, `preprocessing` (a sentence), `tokenizer`, and
    implement `prepare` and `forward`."""

    backend: str = ""
    preprocessing: str = ""

    def __init__(self, size: int = 800, max_size: int = 1333):
        self.size, self.max_size = int(size), int(max_size)
        self.tokenizer = None

    # ---- what a backend implements ----------------------------------------------------------

    def prepare(self, images: Sequence[np.ndarray], size: Optional[int] = None, max_size: Optional[int] = None):
        """HxWx3 uint8 RGB images -> (pixel_values Bx3xHxW float, pixel_mask BxHxW bool, True on
        pixels), resized so the shortest side is `size` and the longest at most `max_size`
        (defaults: the detector's)."""
        raise NotImplementedError

    def forward(self, pixel_values, pixel_mask, captions: List[str]):
        """-> (logits BxQx256, boxes BxQx4 normalized cxcywh), float32 tensors on the CPU."""
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------------

    def tokenize(self, captions: List[str]):
        """The token ids the network reads (padded to the longest caption) and each token's
        character offsets, from the backend's own tokenizer."""
        return self.tokenizer(captions, padding="longest", return_offsets_mapping=True)

    def detect(self, images: Union[np.ndarray, Sequence[np.ndarray]], text: Texts, box_threshold: float = 0.3,
               text_threshold: float = 0.25, nms: Optional[float] = None,
               nms_class_agnostic: bool = True, size: Optional[int] = None,
               max_size: Optional[int] = None) -> List[Detections]:
        """Detections for each image: boxes in pixels, `scores`, `class_id` (index into the
        prompt's classes), `labels` (the class names) and `data["phrase"]` (the tokens above
        `text_threshold`). `text` is one prompt for every image or one per image. An image with
        nothing above `box_threshold` gets an empty Detections. `size`/`max_size` override the
        detector's resize for this call."""
        single = isinstance(images, np.ndarray) and images.ndim == 3
        images = [images] if single else list(images)
        for image in images:
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
                raise ValueError(f"images must be HxWx3 uint8 RGB arrays, got {_describe(image)}")
        texts = [text] * len(images) if isinstance(text, str) or text is None else list(text)
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} prompts for {len(images)} images: give one prompt, or one per image")
        prompts = [parse_prompt(t) for t in texts]
        if not images:
            return []
        pixel_values, pixel_mask = self.prepare(images, size, max_size)
        return self.detect_tensors(pixel_values, pixel_mask, prompts, [image.shape[:2] for image in images],
                                   box_threshold, text_threshold, nms, nms_class_agnostic)

    def detect_tensors(self, pixel_values, pixel_mask, prompts: Sequence[Prompt], image_sizes: Sequence[Tuple[int, int]],
                       box_threshold: float = 0.3, text_threshold: float = 0.25, nms: Optional[float] = None,
                       nms_class_agnostic: bool = True) -> List[Detections]:
        """`detect` on pixels already prepared (by either backend: the parity tests give both
        the same tensor); boxes are scaled to `image_sizes` (height, width)."""
        captions = [p.caption for p in prompts]
        tokens = self.tokenize(captions)
        for caption, ids in zip(captions, tokens["input_ids"]):
            if len(ids) > MAX_TEXT_TOKENS:
                raise ValueError(f"detection prompt too long: {len(ids)} tokens, Grounding DINO reads at most "
                                 f"{MAX_TEXT_TOKENS} ({caption[:60]!r}...); split the classes over several prompts")
        logits, boxes = self.forward(pixel_values, pixel_mask, captions)
        out = []
        for i, (image_size, prompt) in enumerate(zip(image_sizes, prompts)):
            dets = self.postprocess(logits[i], boxes[i], prompt, tokens["input_ids"][i], tokens["offset_mapping"][i],
                                    tuple(image_size), box_threshold, text_threshold)
            if nms is not None and len(dets):
                dets = dets.nms(nms, class_agnostic=nms_class_agnostic)
            out.append(dets)
        return out

    def postprocess(self, logits, boxes, prompt: Prompt, input_ids, offsets, image_size: Tuple[int, int],
                    box_threshold: float, text_threshold: float) -> Detections:
        """One image's raw outputs -> Detections (see `detect`)."""
        import torch

        probs = logits.float().sigmoid()
        scores = probs.max(dim=-1).values
        keep = scores > box_threshold
        height, width = image_size
        if not keep.any():  # nothing found: empty, with the same fields as a non-empty result
            return Detections(np.zeros((0, 4), np.float32), scores=[], class_id=[], labels=[], data={"phrase": []},
                              image_size=image_size)
        cx, cy, w, h = boxes[keep].float().unbind(-1)
        xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)
        n_tokens = min(len(input_ids), probs.shape[-1])
        token_class = token_classes(prompt, [tuple(o) for o in offsets[:n_tokens]])
        class_id, phrases = assign(probs[keep].numpy(), token_class, list(input_ids[:n_tokens]), self.tokenizer,
                                   text_threshold)
        return Detections(xyxy.numpy(), scores=scores[keep].numpy(), class_id=class_id,
                          labels=[prompt.classes[k] for k in class_id], data={"phrase": phrases},
                          image_size=image_size)


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__

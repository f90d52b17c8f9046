"""`Sam3`: a loaded SAM 3 (concept model, processor, tracker) and the image features both share.

An image is encoded once by the concept model's vision encoder (backbone + detector neck); the
result is kept (keyed by the image's pixels, `cache_size` images) and serves every phrase and
exemplar prompted on it, and the interactive tracker's embeddings are made from the same backbone
output by the tracker's own neck (`tracker_embeddings`), so a corrective click after a concept
prompt runs no encoder again. Text embeddings are kept per phrase (`text_cache_size`), so a
vocabulary that recurs over many images is encoded once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass
class ImageFeatures:
    """One image's encoder output: transformers' `Sam3VisionEncoderOutput` for a batch of one
    (backbone `last_hidden_state`, the detector neck's `fpn_hidden_states` and their
    `fpn_position_encoding`), and the tracker's embeddings once asked for."""

    original_size: Tuple[int, int]  # (H, W) of the image as given
    vision: Any
    tracker: Optional[List[torch.Tensor]] = None


class Sam3:
    """SAM 3 through transformers: `segment` (concepts: phrases and exemplar boxes -> every instance)
    and `predictor()` (points, boxes, masks -> a mask), over one encoding of each image."""

    def __init__(self, detector, processor, tracker=None, name: str = "sam3", device: Any = "cpu",
                 cache_size: int = 2, text_cache_size: int = 256, folder: Optional[str] = None) -> None:
        self.detector, self.processor, self.tracker = detector, processor, tracker
        self.name, self.device, self.folder = name, torch.device(device), folder  # folder: where it was read from
        self.dtype = next(detector.parameters()).dtype
        self.cache_size, self.text_cache_size = cache_size, text_cache_size
        self._images: "OrderedDict[str, ImageFeatures]" = OrderedDict()
        self._texts: "OrderedDict[str, Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()

    def __repr__(self) -> str:
        parts = "concept model" + (" + tracker" if self.tracker is not None else "")
        return f"Sam3({self.name!r}: {parts} on {self.device}, {str(self.dtype).replace('torch.', '')})"

    @property
    def image_size(self) -> int:
        """The side of the square the images are resized to (1008 for facebook/sam3)."""
        return int(self.processor.image_processor.size["height"])

    # ---- concepts and clicks ------------------------------------------------------------------

    def segment(self, images: Sequence, prompts: Sequence, **kwargs) -> list:
        """Every instance of each image's concepts (`grounded.sam3.concepts.segment_concepts`)."""
        from .concepts import segment_concepts

        return segment_concepts(self, images, prompts, **kwargs)

    def predictor(self):
        """An interactive predictor (`Sam3Predictor`) over this model's tracker and image features."""
        from .predictor import Sam3Predictor

        return Sam3Predictor(self)

    # ---- images -------------------------------------------------------------------------------

    @torch.no_grad()
    def features(self, images: Sequence[np.ndarray], batch_size: int = 4) -> List[ImageFeatures]:
        """Each image's `ImageFeatures` (HxWx3 uint8 RGB arrays): from the cache, else encoded,
        `batch_size` images per vision-encoder call."""
        keys = [image_key(image) for image in images]
        todo = list(dict.fromkeys(k for k in keys if k not in self._images))
        found = {k: self._images[k] for k in keys if k in self._images}
        first = {k: images[keys.index(k)] for k in todo}
        for start in range(0, len(todo), max(1, batch_size)):
            chunk = todo[start:start + max(1, batch_size)]
            found.update(zip(chunk, self._encode([first[k] for k in chunk])))
        for key in keys:
            self._remember(self._images, key, found[key], self.cache_size)
        return [found[k] for k in keys]

    def _encode(self, images: List[np.ndarray]) -> List[ImageFeatures]:
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        # (the processor wraps the arrays as tensors: a read-only one would make torch warn)
        images = [image if image.flags.writeable else image.copy() for image in images]
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        vision = self.detector.get_vision_features(pixel_values=pixels.to(self.device, self.dtype))
        out = []
        for i, image in enumerate(images):
            one = Sam3VisionEncoderOutput(
                last_hidden_state=vision.last_hidden_state[i:i + 1],
                fpn_hidden_states=tuple(f[i:i + 1] for f in vision.fpn_hidden_states),
                fpn_position_encoding=tuple(p[i:i + 1] for p in vision.fpn_position_encoding))
            out.append(ImageFeatures((int(image.shape[0]), int(image.shape[1])), one))
        return out

    @torch.no_grad()
    def tracker_embeddings(self, features: ImageFeatures) -> List[torch.Tensor]:
        """The tracker's image embeddings from the shared backbone output: what `Sam3TrackerModel`
        computes from pixel values (its neck, the decoder's conv_s0/conv_s1 on the two finest levels,
        the no-memory embedding on the last level, one map per `backbone_feature_sizes` entry)."""
        self.require_tracker()
        if features.tracker is None:
            tracker = self.tracker
            hidden = features.vision.last_hidden_state  # 1 x (h*w) x C
            height, width = tracker.prompt_encoder.image_embedding_size
            fpn, _ = tracker.vision_encoder.neck(hidden.view(1, height, width, -1).permute(0, 3, 1, 2))
            maps = list(fpn)
            maps[0] = tracker.mask_decoder.conv_s0(maps[0])
            maps[1] = tracker.mask_decoder.conv_s1(maps[1])
            maps = [m.flatten(2).permute(2, 0, 1) for m in maps]  # (h*w) x 1 x C
            maps[-1] = maps[-1] + tracker.no_memory_embedding
            features.tracker = [m.permute(1, 2, 0).reshape(1, -1, *size)
                                for m, size in zip(maps, tracker.backbone_feature_sizes)]
        return features.tracker

    def require_tracker(self) -> None:
        """A ValueError saying so when this checkpoint has no interactive tracker."""
        if self.tracker is None:
            raise ValueError(f"SAM 3 {self.name!r} has no interactive tracker: its checkpoint is the concept model "
                             "only (model_type 'sam3'); the interactive predictor needs a 'sam3_video' checkpoint "
                             "such as facebook/sam3")

    # ---- text ---------------------------------------------------------------------------------

    @torch.no_grad()
    def text_embeddings(self, phrases: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeddings N x L x C, attention mask N x L) of the phrases, as `Sam3Model` reads them
        (`text_embeds.pooler_output`); phrases seen before come from the cache."""
        todo = list(dict.fromkeys(p for p in phrases if p not in self._texts))
        found = {p: self._texts[p] for p in phrases if p in self._texts}
        if todo:
            tokens = self.processor(text=todo, return_tensors="pt")
            ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
            embeds = self.detector.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            found.update({p: (embeds[i], mask[i]) for i, p in enumerate(todo)})
        for phrase in phrases:
            self._remember(self._texts, phrase, found[phrase], self.text_cache_size)
        return (torch.stack([found[p][0] for p in phrases]), torch.stack([found[p][1] for p in phrases]))

    # ---- cache --------------------------------------------------------------------------------

    @staticmethod
    def _remember(cache: OrderedDict, key: str, value: Any, size: int) -> None:
        if size <= 0:
            return
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)

    def clear_cache(self, images: bool = True, texts: bool = True) -> None:
        """Forget the images' features and/or the phrases' embeddings."""
        if images:
            self._images.clear()
        if texts:
            self._texts.clear()


def image_key(image: np.ndarray) -> str:
    """A key for an image's pixels (and shape)."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()


"""The models an evaluation compares, behind one small interface.

A `Segmenter` sets an image, then answers batches of prompts (points, boxes, low-res mask inputs)
with masks, predicted IoUs and low-res logits, and generates automatic masks. `GroundedSegmenter`
uses grounded's public SAM API (`SamPredictor.set_image/predict_many`, `SamAutomaticMaskGenerator`);
`ReferenceSegmenter` uses the reference implementation (`segment_anything` for ViT-B/L/H, `mobile_sam`
for TinyViT) through its own public API, loaded with the very same weights.

Models given by several names or paths that hold the same weights (and precision) share one
predictor, so an image is encoded once for all of them and for every task of the run; the predictor's
embedding cache is keyed by the image's pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

# Full-size mask logits a reference call may hold at once (it builds them as float before thresholding).
PROMPT_MEMORY_BYTES = 512 * 2**20
# Prompts per decoder call: the reference decoder repeats the 64x64 image embedding once per prompt.
MAX_PROMPTS_PER_CALL = 64
DTYPE_SUFFIXES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def prompt_chunks(n: int, height: int, width: int, outputs: int = 3) -> List[slice]:
    """Slices of n prompts small enough that their full-size float masks fit PROMPT_MEMORY_BYTES."""
    size = max(1, min(MAX_PROMPTS_PER_CALL, int(PROMPT_MEMORY_BYTES // max(1, 4 * outputs * height * width))))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _take(array, part: slice):
    return None if array is None else array[part]


class Segmenter:
    """What a protocol needs from a model (see the module docstring)."""

    label: str
    kind: str  # "grounded" or "reference"
    weights: str  # fingerprint of the weights (and precision)

    def set_image(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget every image (the next set_image encodes again): for timing from a cold start."""

    def predict(self, coords: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
                boxes: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                multimask: bool = True, return_logits: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N prompts on the current image: coords NxKx2 (pixels) with labels NxK, boxes Nx4 (xyxy),
        mask_input Nx1x256x256. Returns masks NxCxHxW (bool, or float logits), scores NxC, low-res NxCx256x256."""
        raise NotImplementedError

    def generate(self, image: np.ndarray, settings: Dict[str, Any]) -> List[dict]:
        """Automatic masks (records with a COCO RLE `segmentation` and `predicted_iou`)."""
        raise NotImplementedError


class GroundedSegmenter(Segmenter):
    kind = "grounded"

    def __init__(self, label: str, predictor, weights: str):
        self.label, self.predictor, self.weights = label, predictor, weights
        self._generators: Dict[tuple, Any] = {}

    def set_image(self, image: np.ndarray) -> None:
        self.predictor.set_image(image)

    def reset(self) -> None:
        self.predictor.clear_cache()
        self.predictor.reset_image()

    def predict(self, coords=None, labels=None, boxes=None, mask_input=None, multimask=True, return_logits=False):
        n = len(next(a for a in (coords, boxes, mask_input) if a is not None))
        h, w = self.predictor.original_size
        parts = [self.predictor.predict_many(point_coords=_take(coords, s), point_labels=_take(labels, s),
                                             boxes=_take(boxes, s), mask_input=_take(mask_input, s),
                                             multimask_output=multimask, return_logits=return_logits)
                 for s in prompt_chunks(n, h, w, 3 if multimask else 1)]
        return tuple(np.concatenate(x) for x in zip(*parts))

    def generate(self, image: np.ndarray, settings: Dict[str, Any]) -> List[dict]:
        key = tuple(sorted(settings.items()))
        generator = self._generators.get(key)
        if generator is None:
            from ..sam2.automatic import mask_generator  # SAM's generator, or SAM 2's for a SAM 2 model

            generator = mask_generator(self.predictor.model, output_mode="coco_rle", **settings)
            # Prompt through the shared predictor: its cache already holds this image's embedding.
            generator.predictor = self.predictor
            self._generators[key] = generator
        self.predictor.cache_size = max(self.predictor.cache_size, 1 + 4 ** settings.get("crop_n_layers", 0))
        return generator.generate(image)


class ReferenceSegmenter(Segmenter):
    kind = "reference"

    def __init__(self, label: str, module, model: torch.nn.Module, weights: str):
        self.label, self.module, self.model, self.weights = label, module, model, weights
        self.predictor = module.SamPredictor(model)
        self._image_key: Optional[str] = None

    def set_image(self, image: np.ndarray) -> None:
        key = _pixels_key(image)
        if key != self._image_key:  # the reference keeps no cache: encode each image once per run
            with torch.no_grad():
                self.predictor.set_image(image)
            self._image_key = key

    def reset(self) -> None:
        self._image_key = None
        self.predictor.reset_image()

    @torch.no_grad()
    def predict(self, coords=None, labels=None, boxes=None, mask_input=None, multimask=True, return_logits=False):
        p = self.predictor
        size = p.original_size
        device = p.device
        n = len(next(a for a in (coords, boxes, mask_input) if a is not None))
        outs = []
        for part in prompt_chunks(n, *size, 3 if multimask else 1):
            c = None if coords is None else torch.as_tensor(p.transform.apply_coords(np.asarray(coords[part], np.float64), size), dtype=torch.float, device=device)
            lab = None if labels is None else torch.as_tensor(np.asarray(labels[part]), dtype=torch.int, device=device)
            b = None if boxes is None else torch.as_tensor(p.transform.apply_boxes(np.asarray(boxes[part], np.float64), size), dtype=torch.float, device=device)
            m = None if mask_input is None else torch.as_tensor(np.asarray(mask_input[part]), dtype=torch.float, device=device)
            masks, scores, low = p.predict_torch(c, lab, boxes=b, mask_input=m, multimask_output=multimask, return_logits=return_logits)
            outs.append((masks.cpu().numpy(), scores.cpu().numpy(), low.cpu().numpy()))
        return tuple(np.concatenate(x) for x in zip(*outs))

    @torch.no_grad()
    def generate(self, image: np.ndarray, settings: Dict[str, Any]) -> List[dict]:
        generator = self.module.SamAutomaticMaskGenerator(self.model, output_mode="coco_rle", **settings)
        return generator.generate(image)


class Sam2ReferenceSegmenter(ReferenceSegmenter):
    """The official sam2 package's image predictor and mask generator (its own batched `predict`)."""

    def __init__(self, label: str, module, model: torch.nn.Module, weights: str):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.label, self.module, self.model, self.weights = label, module, model, weights
        self.predictor = SAM2ImagePredictor(model)
        self._image_key = None

    def reset(self) -> None:
        self._image_key = None
        self.predictor.reset_predictor()

    @torch.no_grad()
    def predict(self, coords=None, labels=None, boxes=None, mask_input=None, multimask=True, return_logits=False):
        n = len(next(a for a in (coords, boxes, mask_input) if a is not None))
        outs = []
        for part in prompt_chunks(n, *self.predictor._orig_hw[0], 3 if multimask else 1):
            result = self.predictor.predict(_take(coords, part), _take(labels, part), _take(boxes, part),
                                            _take(mask_input, part), multimask_output=multimask,
                                            return_logits=return_logits)
            # sam2 drops the prompt axis of a batch of one, and gives masks as 0.0/1.0
            outs.append([r[None] if len(range(n)[part]) == 1 else r for r in result])
        masks, scores, low = (np.concatenate(x) for x in zip(*outs))
        return (masks if return_logits else masks > 0.5), scores, low

    @torch.no_grad()
    def generate(self, image: np.ndarray, settings: Dict[str, Any]) -> List[dict]:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        return SAM2AutomaticMaskGenerator(self.model, output_mode="coco_rle", **settings).generate(image)


def _pixels_key(image: np.ndarray) -> str:
    digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every tensor of the state dict (names, dtypes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass
class ModelSpec:
    name: str  # a known checkpoint name, a file, a folder or a hub id
    dtype: Optional[torch.dtype] = None
    label: str = ""

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """NAME or NAME@bf16 / NAME@fp16 (autocast over the float32 weights)."""
        name, dtype = text, None
        if "@" in text and text.rsplit("@", 1)[1] in DTYPE_SUFFIXES:
            name, suffix = text.rsplit("@", 1)
            dtype = DTYPE_SUFFIXES[suffix]
        stem = Path(name).stem if Path(name).expanduser().exists() else name.replace("/", "_")
        label = stem + ("" if dtype is None else "@" + text.rsplit("@", 1)[1])
        return cls(name, dtype, label)


def reference_type(state_dict: Dict[str, torch.Tensor]) -> str:
    """The official SAM variant these weights have the shape of: vit_t, vit_b, vit_l or vit_h."""
    if any(k.startswith("image_encoder.patch_embed.seq") for k in state_dict):
        return "vit_t"
    pos = state_dict.get("image_encoder.pos_embed")
    variants = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
    if pos is None or pos.shape[-1] not in variants:
        raise ValueError("--reference needs an official SAM architecture (ViT-B/L/H or MobileSAM's TinyViT); "
                         "this model's encoder is none of them")
    return variants[pos.shape[-1]]


def build_reference(model: torch.nn.Module, device: str) -> Tuple[Any, torch.nn.Module]:
    """The reference implementation of the model's variant, loaded with the model's own weights."""
    from ..sam2 import Sam2

    if isinstance(model, Sam2):
        import sam2

        from ..sam2.reference import reference_model

        return sam2, reference_model(model, device)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    variant = reference_type(state)
    try:
        import mobile_sam as module_ref
    except ImportError:
        module_ref = None
    if variant != "vit_t":
        try:
            import segment_anything as module_ref
        except ImportError:
            raise RuntimeError("--reference for ViT models needs segment_anything (pip install segment-anything)") from None
    elif module_ref is None:
        raise RuntimeError("--reference for MobileSAM needs mobile_sam (pip install --no-deps mobilesam-mirror)")
    reference = module_ref.sam_model_registry[variant]()
    try:
        reference.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"the reference {variant} cannot load these weights (non-official dimensions?): "
                         f"{str(err).splitlines()[0]}") from None
    return module_ref, reference.to(device).eval()


def load_segmenters(specs: Sequence[str], reference: bool = False, device: str = "cpu") -> List[Segmenter]:
    """Grounded segmenters for `specs` (sharing a predictor where weights and precision agree), and
    with `reference` the reference implementation of each distinct model after it."""
    # Loaded as ordinary tensors even inside torch.inference_mode(): the evaluation runs in any mode.
    with torch.inference_mode(False):
        return _load_segmenters(specs, reference, device)


def _load_segmenters(specs: Sequence[str], reference: bool, device: str) -> List[Segmenter]:
    from ..sam2 import load_sam_or_sam2, predictor_for  # SAM's, or SAM 2's for SAM 2 / 2.1 weights

    parsed = [ModelSpec.parse(s) for s in specs]
    labels = _unique([p.label for p in parsed])
    predictors: Dict[tuple, Any] = {}
    loaded: Dict[str, Tuple[torch.nn.Module, str]] = {}
    out: List[Segmenter] = []
    for spec, label in zip(parsed, labels):
        if spec.name not in loaded:
            model = load_sam_or_sam2(spec.name, device=device, image_encoder_backend="auto")
            loaded[spec.name] = (model, weights_fingerprint(model))
        model, fingerprint = loaded[spec.name]
        key = (fingerprint, str(spec.dtype))
        if key not in predictors:
            predictors[key] = predictor_for(model, cache_size=4, autocast_dtype=spec.dtype)
        out.append(GroundedSegmenter(label, predictors[key], f"{fingerprint}:{spec.dtype or 'fp32'}"))
    if reference:
        seen = set()
        for seg in list(out):
            fingerprint = seg.weights.split(":")[0]
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            module, ref_model = build_reference(seg.predictor.model, device)
            kind = Sam2ReferenceSegmenter if module.__name__ == "sam2" else ReferenceSegmenter
            out.append(kind(f"{seg.label.split('@')[0]} (reference)", module, ref_model, fingerprint + ":reference"))
    return out


def _unique(labels: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out

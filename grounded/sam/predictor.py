"""SamPredictor: encode an image once, prompt it many times.

A drop-in for `segment_anything.SamPredictor` (same methods, arguments and returned arrays), plus:
`set_images` encodes many images in batches (`select_image` makes one of them current),
`predict_many` runs N prompts on one image in one decoder call, `predict_batch` prompts several
encoded images, `decode` gives the low-res logits of prompts already in the model's frame, an
embedding cache keyed by image content means a second `set_image` of the same pixels never
re-encodes, and `autocast_dtype` runs the networks in bf16/fp16.
"""

import contextlib
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .model import Sam
from .utils.transforms import ResizeLongestSide


class PromptError(ValueError):
    """A prompt that does not fit the image or the other prompts."""


@dataclass
class ImageState:
    features: torch.Tensor  # 1 x C x h x w
    original_size: Tuple[int, int]  # (H, W) of the image as given
    input_size: Tuple[int, int]  # (H, W) after resizing the long side to img_size


class SamPredictor:
    def __init__(self, sam_model: Sam, cache_size: int = 4, autocast_dtype: Optional[torch.dtype] = None) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.cache_size = cache_size
        self.autocast_dtype = autocast_dtype
        self._cache: "OrderedDict[str, ImageState]" = OrderedDict()
        self.reset_image()

    # ------------------------------------------------------------------ images

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Encode an image (HxWx3 uint8 array, or anything `grounded.io.load_image` reads) for prompting."""
        image = self._prepare_image(image, image_format)
        key = self._cache_key(image)
        state = self._cache.get(key)
        if state is None:
            state = self._encode([image])[0]
            self._remember(key, state)
        else:
            self._cache.move_to_end(key)
        self._batch = []
        self._use(state)

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]) -> None:
        """Encode a 1x3xHxW tensor already resized by `self.transform` (long side = img_size)."""
        size = self.model.image_encoder.img_size
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3 or max(transformed_image.shape[2:]) != size:
            raise ValueError(
                f"set_torch_image expects a Bx3xHxW tensor with long side {size}, got shape {tuple(transformed_image.shape)}"
            )
        self.reset_image()
        with self.autocast():
            pixels = self.model.preprocess(transformed_image.to(self.device)).to(self.model.dtype)
            features = self.model.image_encoder(pixels)
        self._use(ImageState(features.float(), tuple(int(s) for s in original_image_size), tuple(transformed_image.shape[-2:])))

    def set_images(self, images: Sequence, image_format: str = "RGB", batch_size: int = 4) -> None:
        """Encode several images, `batch_size` at a time through the encoder, for `predict_batch` or
        `select_image`; the first becomes the current image. Images already in the cache are not
        encoded again."""
        prepared = [self._prepare_image(im, image_format) for im in images]
        keys = [self._cache_key(im) for im in prepared]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        states = {}
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for i, state in zip(chunk, self._encode([prepared[i] for i in chunk])):
                states[i] = state
        self._batch = [states.get(i) or self._cache[k] for i, k in enumerate(keys)]
        for i, state in states.items():
            self._remember(keys[i], state)
        if self._batch:
            self._use(self._batch[0])

    def select_image(self, index: int) -> None:
        """Make image `index` of the last `set_images` the current one (its embedding is kept)."""
        if not 0 <= index < len(self._batch):
            raise IndexError(f"image {index} of {len(self._batch)} given to set_images")
        self._use(self._batch[index])

    @torch.no_grad()
    def _encode(self, images: List[np.ndarray]) -> List[ImageState]:
        inputs, sizes = [], []
        for image in images:
            resized = self.transform.apply_image(image)
            tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
            inputs.append(self.model.preprocess(tensor.float()))
            sizes.append((image.shape[:2], resized.shape[:2]))
        with self.autocast():
            features = self.model.image_encoder(torch.stack(inputs).to(self.model.dtype)).float()
        return [ImageState(f[None], tuple(o), tuple(i)) for f, (o, i) in zip(features, sizes)]

    def _prepare_image(self, image, image_format: str) -> np.ndarray:
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            from ..io.image import load_image

            image = load_image(image)
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"empty image of shape {image.shape}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        return np.ascontiguousarray(image)

    def _cache_key(self, image: np.ndarray) -> str:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(repr(image.shape).encode())
        return digest.hexdigest()

    def _remember(self, key: str, state: ImageState) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = state
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _use(self, state: ImageState) -> None:
        self.features = state.features
        self.original_size = state.original_size
        self.input_size = state.input_size
        self.orig_h, self.orig_w = state.original_size
        self.input_h, self.input_w = state.input_size
        self.is_image_set = True

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One prompt (points and/or a box and/or a low-res mask) in image pixels (x, y).
        Returns masks CxHxW (bool, or logits), scores C and low-res logits Cx256x256."""
        self._require_image()
        box = None if box is None else np.asarray(box, dtype=np.float64)
        if box is not None and box.size != 4:
            raise PromptError(f"box must have 4 numbers (x0, y0, x1, y1), got shape {box.shape}; use predict_many for several boxes")
        coords, labels, boxes, masks = self.transform_prompts(
            None if point_coords is None else np.asarray(point_coords)[None],
            None if point_labels is None else np.asarray(point_labels)[None],
            None if box is None else box.reshape(1, 4),
            None if mask_input is None else np.asarray(mask_input)[None],
        )
        masks, scores, low_res = self.predict_torch(coords, labels, boxes, masks, multimask_output, return_logits)
        return masks[0].cpu().numpy(), scores[0].float().cpu().numpy(), low_res[0].float().cpu().numpy()

    def predict_many(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        boxes: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N prompts on the current image in one decoder call: point_coords NxKx2 with point_labels NxK,
        boxes Nx4, mask_input Nx1x256x256 (any combination with the same N).
        Returns masks NxCxHxW, scores NxC and low-res logits NxCx256x256."""
        self._require_image()
        tensors = self.transform_prompts(point_coords, point_labels, boxes, mask_input)
        masks, scores, low_res = self.predict_torch(*tensors, multimask_output, return_logits)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low_res.float().cpu().numpy()

    def predict_batch(
        self,
        point_coords: Optional[Sequence[Optional[np.ndarray]]] = None,
        point_labels: Optional[Sequence[Optional[np.ndarray]]] = None,
        boxes: Optional[Sequence[Optional[np.ndarray]]] = None,
        mask_input: Optional[Sequence[Optional[np.ndarray]]] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`predict_many` for each image given to `set_images`; each argument is a list with one
        entry (or None) per image. Returns one (masks, scores, low-res logits) per image."""
        if not self._batch:
            raise RuntimeError("call set_images(...) before predict_batch(...) (set_image and reset_image end them)")
        n = len(self._batch)
        args = [point_coords, point_labels, boxes, mask_input]
        for name, arg in zip(("point_coords", "point_labels", "boxes", "mask_input"), args):
            if arg is not None and len(arg) != n:
                raise PromptError(f"{name} has {len(arg)} entries for {n} images")
        results = []
        for i in range(n):
            self.select_image(i)
            per_image = [None if a is None else a[i] for a in args]
            results.append(self.predict_many(*per_image, multimask_output=multimask_output, return_logits=return_logits))
        return results

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the resized frame (see `self.transform`): point_coords BxNx2,
        point_labels BxN, boxes Bx4, mask_input Bx1x256x256. Returns BxCxHxW masks, BxC scores and
        BxCx256x256 low-res logits."""
        low_res, iou = self.decode(point_coords, point_labels, boxes, mask_input, multimask_output)
        if return_logits:
            masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        else:
            masks = self.model.threshold_masks(low_res, self.input_size, self.original_size)
        return masks, iou, low_res

    @torch.no_grad()
    def decode(
        self,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask_output: bool = True,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The low-res mask logits (BxCx256x256) and IoU predictions (BxC), float32, of B prompts
        already in the resized frame (`transform_prompts` or `self.transform`), in one decoder call."""
        self._require_image()
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_coords and point_labels must be given together")
        if point_coords is not None and point_coords.shape[:2] != point_labels.shape[:2]:
            raise PromptError(
                f"point_labels shape {tuple(point_labels.shape)} does not match point_coords {tuple(point_coords.shape)}"
            )
        with self.autocast():
            low_res, iou = self.run_networks(point_coords, point_labels, boxes, mask_input, multimask_output)
        return low_res.float(), iou.float()

    def run_networks(self, point_coords, point_labels, boxes, mask_input, multimask_output: bool):
        """The prompt encoder and mask decoder on the current image (SAM 2's predictor overrides it)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return self.model.mask_decoder(
            image_embeddings=self.features.to(self.model.dtype),
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def transform_prompts(self, point_coords=None, point_labels=None, boxes=None, mask_input=None, frame_size=None):
        """Prompts of N prompts in image pixels (point_coords NxKx2 with point_labels NxK, boxes Nx4,
        mask_input Nx1x256x256), validated, as tensors in the model's resized frame for `decode`.
        frame_size: the (H, W) the coordinates are given in, if not the image's (SAM 2's normalised
        coordinates are in a 1 x 1 frame)."""
        frame = tuple(frame_size or self.original_size)
        h, w = frame
        coords_t = labels_t = boxes_t = mask_t = None
        sizes = {}
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_labels must be supplied with point_coords (1 foreground, 0 background)")
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise PromptError(f"point_coords must be Kx2 (or NxKx2 for many prompts), got shape {coords.shape[1:] if coords.ndim == 3 else coords.shape}")
            if labels.shape != coords.shape[:2]:
                raise PromptError(f"{labels.shape[-1] if labels.ndim else 0} point_labels for {coords.shape[1]} points: give one label per point")
            if coords.shape[1] == 0:
                raise PromptError("point_coords is empty")
            check_inside(coords.reshape(-1, 2), w, h, "point")
            sizes["points"] = coords.shape[0]
            coords_t = torch.as_tensor(self.transform.apply_coords(coords, frame), dtype=torch.float, device=self.device)
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=self.device)
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
                bad = b[(b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])][0]
                raise PromptError(f"box {bad.tolist()} has x1 < x0 or y1 < y0: boxes are (x0, y0, x1, y1)")
            check_inside(b.reshape(-1, 2), w, h, "box corner")
            sizes["boxes"] = b.shape[0]
            boxes_t = torch.as_tensor(self.transform.apply_boxes(b, frame), dtype=torch.float, device=self.device)
        if mask_input is not None:
            m = np.asarray(mask_input, dtype=np.float32)
            want = tuple(self.model.prompt_encoder.mask_input_size)
            if m.ndim != 4 or m.shape[1] != 1 or m.shape[2:] != want:
                raise PromptError(f"mask_input must be 1x{want[0]}x{want[1]} low-res logits (a previous low_res output), got shape {m.shape[1:]}")
            sizes["mask_input"] = m.shape[0]
            mask_t = torch.as_tensor(m, device=self.device, dtype=self.model.dtype)
        if len(set(sizes.values())) > 1:
            raise PromptError(f"prompt counts differ: {sizes}")
        return coords_t, labels_t, boxes_t, mask_t

    # ------------------------------------------------------------------ state

    def get_image_embedding(self) -> torch.Tensor:
        self._require_image()
        return self.features

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        self._batch: List[ImageState] = []  # the images of set_images; a single image ends them
        self.is_image_set = False
        self.features = None
        self.original_size = self.input_size = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None

    def clear_cache(self) -> None:
        """Forget every kept image embedding (the current image stays set)."""
        self._cache.clear()
        self._batch = []

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def autocast(self):
        """The context the networks run in: autocast to `autocast_dtype`, or nothing for float32."""
        if self.autocast_dtype is None or self.autocast_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def check_inside(xy: np.ndarray, width: int, height: int, what: str) -> None:
    """Every (x, y) finite and within the width x height image, else a PromptError naming the first."""
    if not np.isfinite(xy).all():
        raise PromptError(f"{what} coordinates must be finite numbers")
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.any():
        x, y = xy[outside][0]
        raise PromptError(f"{what} ({x:g}, {y:g}) lies outside the {width}x{height} image (x in [0, {width}], y in [0, {height}])")

"""SAM2ImagePredictor: a drop-in for `sam2.sam2_image_predictor.SAM2ImagePredictor` (same methods,
arguments and returned arrays), built on grounded's `SamPredictor`, so it also has grounded's
interface: `predict_many` (N prompts in one decoder call), `set_images` / `select_image`, the
embedding cache keyed by image content, `decode`, `autocast_dtype`.

What SAM 2 does differently from SAM, and this class with it: the image is stretched (not padded) to
the model's square input; prompt coordinates go to that square by x / W and y / H (or come already
normalised to [0, 1] with `normalize_coords=False`); boxes go in as two points labelled 2 and 3 ahead
of the clicks; the decoder also takes the image's high-res features; masks are one bilinear resize of
the low-res logits, after optional hole and sprinkle filling (`fill.py`, on every device), and the
low-res logits returned are clamped to [-32, 32]."""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..sam.predictor import ImageState, PromptError, SamPredictor
from .fill import fill_holes_and_sprinkles
from .model import Sam2


@dataclass
class Sam2ImageState(ImageState):
    high_res_features: Optional[List[torch.Tensor]] = None  # the decoder's two projected maps, 1 x C x h x w each


class Sam2Transform:
    """SAM 2's prompt frame: (x / W, y / H) * S, in float32 as the official `SAM2Transforms`."""

    def __init__(self, size: int) -> None:
        self.target_length = size

    def apply_coords(self, coords, original_size: Tuple[int, int]) -> torch.Tensor:
        h, w = original_size
        coords = torch.as_tensor(np.asarray(coords), dtype=torch.float32).clone()
        coords[..., 0] = coords[..., 0] / w
        coords[..., 1] = coords[..., 1] / h
        return coords * self.target_length

    def apply_boxes(self, boxes, original_size: Tuple[int, int]) -> torch.Tensor:
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)


class SAM2ImagePredictor(SamPredictor):
    def __init__(self, sam_model: Sam2, mask_threshold: float = 0.0, max_hole_area: float = 0.0,
                 max_sprinkle_area: float = 0.0, *, cache_size: int = 4,
                 autocast_dtype: Optional[torch.dtype] = None, **kwargs) -> None:
        if not isinstance(sam_model, Sam2):
            from ..sam.model import Sam

            hint = "; use grounded.sam.SamPredictor for SAM 1" if isinstance(sam_model, Sam) else ""
            raise TypeError(f"SAM2ImagePredictor takes a SAM 2 model (grounded.sam2.Sam2), not {type(sam_model).__name__}{hint}")
        super().__init__(sam_model, cache_size=cache_size, autocast_dtype=autocast_dtype)
        self.transform = Sam2Transform(sam_model.image_size)
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self._is_batch = False

    @classmethod
    def from_pretrained(cls, model_id: str, **kwargs) -> "SAM2ImagePredictor":
        """A predictor of `grounded.sam2.from_pretrained(model_id)` (a hub id, folder, file or known name)."""
        from .build import from_pretrained

        loading = {k: kwargs.pop(k) for k in ("device", "dtype", "cache_dir", "revision", "config") if k in kwargs}
        kwargs.pop("mode", None)
        return cls(from_pretrained(model_id, **loading), **kwargs)

    # ------------------------------------------------------------------ images

    def set_image(self, image, image_format: str = "RGB") -> None:
        """Encode an image (HxWx3 uint8 array, float array in [0, 1], PIL image, or anything
        `grounded.io.load_image` reads)."""
        self._is_batch = False
        super().set_image(self._as_array(image), image_format)

    def set_image_batch(self, image_list: List[np.ndarray]) -> None:
        """Encode several images in one encoder call, for `predict_batch`."""
        if not isinstance(image_list, list) or not image_list:
            raise ValueError("set_image_batch expects a non-empty list of HxWx3 RGB arrays")
        self.set_images([self._as_array(im) for im in image_list], batch_size=len(image_list))
        # `predict` after set_image_batch prompts the last image, as the official predictor (image -1)
        self.select_image(len(image_list) - 1)

    def set_images(self, images, image_format: str = "RGB", batch_size: int = 4) -> None:
        """grounded's interface: several images encoded, the first current; `predict_batch` prompts them."""
        super().set_images(images, image_format, batch_size)
        self._is_batch = bool(self._batch)

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]) -> None:
        """Encode a 1x3xSxS tensor already preprocessed as the model's input (`Sam2.preprocess_image`)."""
        size = self.model.image_size
        if transformed_image.ndim != 4 or tuple(transformed_image.shape[1:]) != (3, size, size):
            raise ValueError(f"set_torch_image expects a 1x3x{size}x{size} tensor, got shape {tuple(transformed_image.shape)}")
        self.reset_image()
        with self.autocast():
            embed, high_res = self.model.encode(transformed_image.to(self.device, self.model.dtype))
        self._use(Sam2ImageState(embed.float(), tuple(int(s) for s in original_image_size), (size, size),
                                 [f.float() for f in high_res]))

    @torch.no_grad()
    def _encode(self, images: List[np.ndarray]) -> List[Sam2ImageState]:
        inputs = torch.stack([self.model.preprocess_image(image) for image in images])
        with self.autocast():
            embed, high_res = self.model.encode(inputs.to(self.model.dtype))
        size = (self.model.image_size, self.model.image_size)
        return [Sam2ImageState(embed[i : i + 1].float(), tuple(image.shape[:2]), size,
                               [f[i : i + 1].float() for f in high_res]) for i, image in enumerate(images)]

    def _use(self, state: Sam2ImageState) -> None:
        super()._use(state)
        self.high_res_features = state.high_res_features

    def _prepare_image(self, image, image_format: str) -> np.ndarray:
        """As SAM's predictor, but a float HxWx3 image in [0, 1] keeps its precision: the official
        predictor feeds a float image to the encoder as it is, where `load_image` rounds it to 8 bits
        (a low-contrast image in [0.40, 0.42] would keep 6 grey levels)."""
        from ..io.image import is_unit_float_rgb

        if not is_unit_float_rgb(image):
            return super()._prepare_image(image, image_format)
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format != self.model.image_format:
            image = image[..., ::-1]
        return np.ascontiguousarray(image, dtype=np.float32)

    @staticmethod
    def _as_array(image):
        """A PIL RGB image as the official predictor reads it (the pixels as stored). Other PIL modes,
        which the official predictor cannot read, go through `grounded.io.load_image` as arrays do:
        PIL's own convert("RGB") would drop alpha instead of compositing onto black and clip 16-bit
        pixels to white, so the same picture would segment differently as PIL and as an array."""
        from PIL import Image

        if isinstance(image, Image.Image):
            if image.mode == "RGB":
                return np.asarray(image)
            from ..io.image import load_image

            return load_image(image)
        return image

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: Optional[np.ndarray] = None,
        point_labels: Optional[np.ndarray] = None,
        box: Optional[np.ndarray] = None,
        mask_input: Optional[np.ndarray] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompts on the current image, as the official `predict`: points Kx2 (or NxKx2) with labels K
        (NxK), a box of 4 (or N boxes Nx4), a low-res mask 1xHxW (or Nx1xHxW); with normalize_coords
        (the default) in image pixels, else already in [0, 1]. Returns masks CxHxW, scores C and low-res
        logits Cx256x256 (a leading N where N > 1)."""
        self._require_image()
        masks, scores, low_res = self._predict_arrays(point_coords, point_labels, box, mask_input,
                                                      multimask_output, return_logits, normalize_coords)
        if masks.shape[0] == 1:  # as the reference's squeeze(0)
            return masks[0], scores[0], low_res[0]
        return masks, scores, low_res

    def predict_batch(
        self,
        point_coords_batch: Optional[Sequence[Optional[np.ndarray]]] = None,
        point_labels_batch: Optional[Sequence[Optional[np.ndarray]]] = None,
        box_batch: Optional[Sequence[Optional[np.ndarray]]] = None,
        mask_input_batch: Optional[Sequence[Optional[np.ndarray]]] = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]]:
        """`predict` on each image of `set_image_batch`, one entry of each list per image. Returns the
        lists of masks, of scores and of low-res logits."""
        if not self._is_batch:  # else the images of an earlier set_image_batch would be prompted
            raise RuntimeError("predict_batch prompts the images of .set_image_batch(...); none are set "
                               "(set_image, set_torch_image and reset_predictor end batch mode): use predict, "
                               "or call set_image_batch first")
        n = len(self._batch)
        args = [point_coords_batch, point_labels_batch, box_batch, mask_input_batch]
        for name, arg in zip(("point_coords_batch", "point_labels_batch", "box_batch", "mask_input_batch"), args):
            if arg is not None and len(arg) != n:
                raise PromptError(f"{name} has {len(arg)} entries for {n} images")
        out: Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]] = ([], [], [])
        for i in range(n):
            self.select_image(i)
            per_image = [None if a is None else a[i] for a in args]
            result = self.predict(*per_image, multimask_output=multimask_output, return_logits=return_logits,
                                  normalize_coords=normalize_coords)
            for into, value in zip(out, result):
                into.append(value)
        return out

    def _predict_arrays(self, point_coords, point_labels, boxes, mask_input, multimask_output, return_logits,
                        normalize_coords):
        coords = labels = None
        if (point_coords is None) != (point_labels is None):
            raise PromptError("point_labels must be supplied with point_coords (1 foreground, 0 background)")
        if point_coords is not None:
            coords, labels = np.asarray(point_coords, dtype=np.float64), np.asarray(point_labels)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64)
            if boxes.size % 4 or boxes.ndim > 2:
                raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1) or Nx4, got shape {boxes.shape}")
            boxes = boxes.reshape(-1, 4)
        if mask_input is not None:
            mask_input = np.asarray(mask_input, dtype=np.float32)
            if mask_input.ndim < 3:
                h, w = self.model.prompt_encoder.mask_input_size
                raise PromptError(f"mask_input must be 1x{h}x{w} (or Nx1x{h}x{w}) low-res logits, got shape "
                                  f"{mask_input.shape}: give one previous low_res output with its axis, e.g. low_res[i][None]")
            if mask_input.ndim == 3:
                mask_input = mask_input[None]
        if normalize_coords:
            return self.predict_many(coords, labels, boxes, mask_input, multimask_output, return_logits)
        try:
            return self.predict_many(coords, labels, boxes, mask_input, multimask_output, return_logits,
                                     frame_size=(1, 1))
        except PromptError as error:
            if "outside" not in str(error):
                raise
            raise PromptError(f"{error}: with normalize_coords=False the coordinates are fractions of the image's "
                              "width and height, in [0, 1]; pixel coordinates go with normalize_coords=True") from None

    def predict_many(self, point_coords=None, point_labels=None, boxes=None, mask_input=None,
                     multimask_output: bool = True, return_logits: bool = False, frame_size=None):
        """N prompts on the current image in one decoder call (grounded's interface): point_coords
        NxKx2 with point_labels NxK, boxes Nx4, mask_input Nx1x256x256. Returns masks NxCxHxW, scores
        NxC and low-res logits NxCx256x256."""
        self._require_image()
        tensors = self.transform_prompts(point_coords, point_labels, boxes, mask_input, frame_size=frame_size)
        masks, scores, low_res = self.predict_torch(*tensors, multimask_output, return_logits)
        return masks.cpu().numpy(), scores.float().cpu().numpy(), low_res.float().cpu().numpy()

    @torch.no_grad()
    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output: bool = True,
                      return_logits: bool = False):
        """Prompts already in the model's input frame. Returns masks, IoU predictions and the low-res
        logits clamped to [-32, 32]."""
        low_res, iou = self.decode(point_coords, point_labels, boxes, mask_input, multimask_output)
        masks = self.upscale(low_res, self.original_size)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou, torch.clamp(low_res, -32.0, 32.0)

    def upscale(self, low_res: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """Low-res logits to mask logits of the given size, holes and sprinkles filled first."""
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            low_res = fill_holes_and_sprinkles(low_res, self.mask_threshold, self.max_hole_area, self.max_sprinkle_area)
        return self.model.postprocess_masks(low_res, None, size)

    def run_networks(self, point_coords, point_labels, boxes, mask_input, multimask_output: bool):
        dtype = self.model.dtype
        return self.model.decode(self.features.to(dtype), [f.to(dtype) for f in self.high_res_features],
                                 point_coords, point_labels, boxes,
                                 None if mask_input is None else mask_input.to(dtype), multimask_output)

    # ------------------------------------------------------------------ state

    def get_image_embedding(self) -> torch.Tensor:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self._features["image_embed"]  # after set_image_batch: every image's, as the official

    def reset_predictor(self) -> None:
        self.reset_image()

    def reset_image(self) -> None:
        super().reset_image()
        self.high_res_features = None
        self._is_batch = False

    @property
    def _features(self) -> Optional[dict]:
        """The official predictor's feature dict, for code that reads it."""
        if not self.is_image_set:
            return None
        if self._is_batch:
            return {"image_embed": torch.cat([s.features for s in self._batch]),
                    "high_res_feats": [torch.cat([s.high_res_features[i] for s in self._batch]) for i in range(2)]}
        return {"image_embed": self.features, "high_res_feats": self.high_res_features}

    @property
    def _orig_hw(self) -> Optional[List[Tuple[int, int]]]:
        if not self.is_image_set:
            return None
        return [s.original_size for s in self._batch] if self._is_batch else [self.original_size]

    @property
    def _is_image_set(self) -> bool:
        return self.is_image_set



def predictor_for(model, **kwargs):
    """`SAM2ImagePredictor` for a SAM 2 / 2.1 model, grounded's `SamPredictor` for SAM 1; kwargs go to it."""
    return (SAM2ImagePredictor if isinstance(model, Sam2) else SamPredictor)(model, **kwargs)

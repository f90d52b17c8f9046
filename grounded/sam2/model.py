"""The SAM 2 / 2.1 image model: Hiera image encoder with FPN neck, SAM's prompt encoder, SAM 2's mask
decoder, and the no-memory embedding that an image without video memory gets. State-dict names equal
the official `SAM2Base`'s for these parts."""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class Sam2(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: ImageEncoder, sam_prompt_encoder: PromptEncoder,
                 sam_mask_decoder: MaskDecoder, image_size: int = 1024) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = sam_prompt_encoder
        self.sam_mask_decoder = sam_mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, image_encoder.neck.d_model))
        self.image_size = image_size
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD, dtype=torch.float32).view(-1, 1, 1), False)

    # SAM 1's names, so code written for grounded's `Sam` (predictor, mask generator, nodes) runs on SAM 2
    @property
    def prompt_encoder(self) -> PromptEncoder:
        return self.sam_prompt_encoder

    @property
    def mask_decoder(self) -> MaskDecoder:
        return self.sam_mask_decoder

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.no_mem_embed.dtype

    def preprocess_image(self, image: np.ndarray) -> torch.Tensor:
        """An HxWx3 uint8 RGB image (or float, in [0, 1]) as the encoder's 3 x S x S input: scaled to [0, 1], resized (not
        padded: SAM 2 stretches every image to the square) with antialiasing, normalised; as the
        official `SAM2Transforms` (ToTensor, Resize, Normalize)."""
        from torchvision.transforms.functional import resize

        x = torch.as_tensor(np.require(image, requirements=["C", "W"]), device=self.device).permute(2, 0, 1).contiguous()
        # contiguous CHW, the layout ToTensor gives the reference; like ToTensor, only uint8 is scaled:
        # a float image is taken as fractions already
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        x = resize(x, [self.image_size, self.image_size])
        return (x - self.pixel_mean) / self.pixel_std

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """B x 3 x S x S preprocessed images -> the image embeddings B x C x S/16 x S/16 (with the
        no-memory embedding added) and the decoder's two projected high-res maps (S/4, S/8)."""
        return self.project_features(self.image_encoder(images))

    def project_features(self, features: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The image encoder's levels -> what the decoder takes: the coarsest plus the no-memory
        embedding, and the two finest through the decoder's `conv_s0`, `conv_s1` (the trainer caches
        the levels of a frozen encoder and projects them on every round, as these weights may train)."""
        feat_s0 = self.sam_mask_decoder.conv_s0(features[0])
        feat_s1 = self.sam_mask_decoder.conv_s1(features[1])
        image_embed = features[-1] + self.no_mem_embed.view(1, -1, 1, 1)
        return image_embed, [feat_s0, feat_s1]

    def embed_prompts(self, point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor] = None, mask_input: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense prompt embeddings. Box corners go in as points labelled 2 and 3 ahead of
        the clicks, as the official predictor passes them."""
        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:
            box_coords = boxes.reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(box_coords.shape[0], 1)
            if points is not None:
                points = (torch.cat([box_coords, points[0]], dim=1), torch.cat([box_labels, points[1]], dim=1))
            else:
                points = (box_coords, box_labels)
        return self.sam_prompt_encoder(points=points, boxes=None, masks=mask_input)

    def decode(self, image_embed: torch.Tensor, high_res_features: Sequence[torch.Tensor],
               point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
               boxes: Optional[torch.Tensor] = None, mask_input: Optional[torch.Tensor] = None,
               multimask_output: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the model's input frame (S x S): points N x K x 2 with labels N x K, boxes N x 4,
        mask logits N x 1 x 4h x 4w. Returns low-res logits and IoU predictions."""
        sparse, dense = self.embed_prompts(point_coords, point_labels, boxes, mask_input)
        return self.sam_mask_decoder(
            image_embeddings=image_embed, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=multimask_output, high_res_features=high_res_features,
        )

    def training_decode(self, features: Sequence[torch.Tensor], image_pe: torch.Tensor,
                        points: Optional[Tuple[torch.Tensor, torch.Tensor]], boxes: Optional[torch.Tensor],
                        mask_input: Optional[torch.Tensor], multimask_output: bool
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One round of the trainer's interactive loop (grounded/sam/training/interactive.py) on the
        image encoder's levels, with the prompt encoder's dense positional encoding: the core decoder
        with autograd (single-mask outputs as trained: no stability fallback in train mode), and also
        the object-score logits (N x 1) that SAM 2's training supervises. Returns logits, IoU
        predictions, object scores."""
        image_embed, high_res = self.project_features(features)
        coords, labels = (None, None) if points is None else points
        sparse, dense = self.embed_prompts(coords, labels, boxes, mask_input)
        decoder = self.sam_mask_decoder
        masks, iou_pred, object_scores = decoder.predict_masks(image_embed, image_pe, sparse, dense, high_res)
        masks, iou_pred = decoder.select_masks(masks, iou_pred, multimask_output)
        return masks, iou_pred, object_scores

    def postprocess_masks(self, masks: torch.Tensor, input_size: Optional[Tuple[int, ...]],
                          original_size: Tuple[int, ...]) -> torch.Tensor:
        """Low-res logits straight to the original size (one bilinear resize: SAM 2 pads nothing, so
        input_size, kept for `Sam`'s signature, plays no part)."""
        return F.interpolate(masks.float(), tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)

    def threshold_masks(self, masks: torch.Tensor, input_size: Optional[Tuple[int, ...]], original_size: Tuple[int, ...],
                        threshold: Optional[float] = None) -> torch.Tensor:
        threshold = self.mask_threshold if threshold is None else threshold
        return self.postprocess_masks(masks, input_size, original_size) > threshold

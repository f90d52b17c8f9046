"""SAM 2's mask decoder on the CPU wing: the same evaluations as SAM's (decoder.py: the low-rank form
for prompts sharing the image, regrouped attentions for mask prompts, the tiled upscaling), with the
object-score token among the output tokens and the image's high-res maps added inside the upscaling
(upscaling.py). `Sam2DecoderWing` is mixed into grounded.sam2's decoder (which imports grounded.sam,
never the reverse) and installed by `grounded.sam.cpu.accelerate` on a `grounded.sam2.Sam2`."""

from typing import Optional, Sequence, Tuple

import torch

from .common import eager_cpu_float32
from .decoder import AcceleratedMaskDecoder, decode


class Sam2DecoderWing:
    """A forward that takes the wing's evaluations where they apply (float32 inference on the CPU with
    one image's high-res maps) and SAM 2's own decoder forward elsewhere."""

    choose_path = AcceleratedMaskDecoder.choose_path

    def train(self, mode: bool = True):
        self.products_cache.clear()
        return super().train(mode)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool,
                high_res_features: Optional[Sequence[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        inputs = (image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        path = self.choose_path(*inputs)
        one_image = high_res_features is not None and all(f.shape[0] == 1 for f in high_res_features)
        if path == "training" or not one_image or not eager_cpu_float32(*high_res_features):
            path = "reference"  # (no frozen-trunk training path for SAM 2)
        self.acceleration.record(f"decoder/{path}")
        if path == "reference":
            return super().forward(*inputs, multimask_output, high_res_features)
        return decode(self, path == "low_rank", *inputs, multimask_output, high_res_features)

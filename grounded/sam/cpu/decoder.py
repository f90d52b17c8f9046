"""SAM's mask decoder for many prompts on one image, on a CPU: the same function as
`mask_decoder.MaskDecoder`, evaluated with little work per prompt.

Every evaluation runs the two-way transformer's layers through one loop (`run_transformer`) over a
form of the image tokens: the low-rank form (low_rank.py) when the prompts share the image tokens
(no mask prompt), the explicit tokens with regrouped attentions (regrouped.py) for mask prompts.
The masks then come out of the tiled upscaling (upscaling.py), only the requested ones. Prompts go
in chunks of 8 (the low-rank path's per-prompt working set is about 2 MB, so 8 prompts stay in a
32 MB L3; 8 was 1.0-1.1x faster than 4, 16 0.93x), side by side on the wing's worker threads.

Training with a frozen trunk (only the output heads learn) takes a hybrid: the transformer and the
upscaling run without autograd (the loop above on explicit tokens, then the reference upscaling),
and only the heads record a graph, several times cheaper on a CPU than the reference with autograd.
"""

from typing import Tuple

import torch

from ..mask_decoder import MaskDecoder
from . import kernels as compiled
from .common import eager_cpu_float32
from .low_rank import LowRankImage
from .regrouped import ExplicitImage
from .threads import map_chunks
from .upscaling import exact_gelus, upscale_masks, upscaling_weights

PROMPT_CHUNK = 8


class AcceleratedMaskDecoder(MaskDecoder):
    """`MaskDecoder` whose forward takes the wing's evaluations where they apply (see `choose_path`)."""

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse_prompt_embeddings: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor, multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        inputs = (image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        path = self.choose_path(*inputs)
        self.acceleration.record(f"decoder/{path}")
        if path == "reference":
            return super().forward(*inputs, multimask_output)
        if path == "training":
            return decode_for_training(self, *inputs, multimask_output)
        return decode(self, path == "low_rank", *inputs, multimask_output)

    def choose_path(self, image_embeddings, image_pe, sparse, dense) -> str:
        """'low_rank' (no mask prompt: the prompts share the image tokens), 'regrouped' (mask prompts),
        'training' (a frozen trunk under autograd) or 'reference', as allowed and as the inputs permit."""
        allows = self.acceleration.allows
        n = sparse.shape[0]
        if image_embeddings.shape[0] not in (1, n) or not eager_cpu_float32(*(image_embeddings, image_pe, sparse, dense),
                                                                          self.iou_token.weight):
            return "reference"
        if torch.is_grad_enabled():
            return "training" if allows("decoder/training") and trunk_is_frozen(self, sparse, dense, image_embeddings, image_pe) \
                else "reference"
        if upscaling_kernels(self) is False:
            return "reference"
        # The prompt encoder's no-mask embedding: one vector broadcast over the grid and the prompts.
        no_mask = dense.stride(-1) == dense.stride(-2) == 0 and (dense.shape[0] == 1 or dense.stride(0) == 0)
        if no_mask and image_embeddings.shape[0] == 1 and allows("decoder/low_rank"):
            return "low_rank"
        return "regrouped" if allows("decoder/regrouped") else "reference"

    def train(self, mode: bool = True):
        self.products_cache.clear()
        return super().train(mode)


def trunk_is_frozen(decoder, *inputs: torch.Tensor) -> bool:
    """Nothing before the output heads needs a gradient: no trainable parameter in the two-way
    transformer, the upscaling or the output tokens, and inputs that need none."""
    trunk = [decoder.transformer, decoder.output_upscaling, decoder.iou_token, decoder.mask_tokens]
    if any(p.requires_grad for m in trunk for p in m.parameters()):
        return False
    return not any(t.requires_grad for t in inputs)


def upscaling_kernels(decoder):
    """The tiled upscaling's elementwise implementation: compiled kernels, None for torch operations,
    or False when neither is allowed."""
    allows = decoder.acceleration.allows
    if allows("upscaling/kernels") and exact_gelus(decoder):
        kernels = compiled.load()
        if kernels is not None:
            return kernels
    return None if allows("upscaling/torch") else False


def run_transformer(transformer, image, tokens: torch.Tensor):
    """TwoWayTransformer.forward on a form of the image tokens (`LowRankImage` or `ExplicitImage`) and
    prompt tokens N x T x C. Returns the processed prompt tokens N x T x C and image tokens (same form)."""
    queries, query_pe = tokens, tokens
    for index, layer in enumerate(transformer.layers):
        queries = layer.token_self_attention(queries, query_pe)
        queries = layer.norm2(queries + image.attended_by(layer.cross_attn_token_to_image, queries + query_pe))
        queries = layer.norm3(queries + layer.mlp(queries))
        image = image.updated(layer.cross_attn_image_to_token, layer.norm4, queries + query_pe, queries, f"layer{index}")
    out = image.attended_by(transformer.final_attn_token_to_image, queries + query_pe)
    return transformer.norm_final_attn(queries + out), image


def output_tokens_of(decoder) -> Tuple[torch.Tensor, int]:
    """The decoder's output tokens and the index of the IoU token among them (SAM 2's object-score
    token comes first)."""
    score_token = getattr(decoder, "obj_score_token", None)
    first = [] if score_token is None else [score_token.weight]
    return torch.cat(first + [decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0), len(first)


def _prepare(decoder, image_embeddings, image_pe, sparse, dense):
    """Prompt tokens N x T x C, image tokens 1 (shared: no mask prompt) or N x HW x C with the dense
    embedding added, positional encoding 1 x HW x C."""
    n = sparse.shape[0]
    output_tokens, _ = output_tokens_of(decoder)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    shared = dense.shape[0] == 1 or dense.stride(0) == 0
    src = image_embeddings + (dense[:1] if shared else dense)
    return tokens, src.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2)


def decode(decoder, low_rank: bool, image_embeddings, image_pe, sparse, dense,
           multimask_output: bool, high_res=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inference: masks N x M x 4h x 4w and IoU predictions N x M, chunks of prompts on the workers.
    high_res: SAM 2's two projected maps of the image (its decoder picks the masks: `select_masks`)."""
    acceleration = decoder.acceleration
    n = sparse.shape[0]
    _, _, h, w = image_embeddings.shape
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    selects = hasattr(decoder, "select_masks")  # SAM 2: every mask, then its own choice (stability fallback)
    if selects:
        mask_slice = slice(None)
    wanted = range(decoder.num_mask_tokens)[mask_slice]
    _, iou_index = output_tokens_of(decoder)
    tokens, image_tokens, pe = _prepare(decoder, image_embeddings, image_pe, sparse, dense)
    kernels = upscaling_kernels(decoder)
    acceleration.record("upscaling/kernels" if kernels is not None else "upscaling/torch")
    products = None
    if low_rank:
        parameters = list(decoder.parameters())
        # (dense: the no-mask embedding's one vector, which the low-rank path requires)
        products = decoder.products_cache.products((image_embeddings, dense[0, :, 0, 0], image_pe), parameters)
    w1, b1, _, _ = upscaling_weights(decoder)
    masks = tokens.new_empty(n, len(wanted), 4 * h, 4 * w)

    def decode_chunk(chunk: slice) -> torch.Tensor:  # writes the chunk's masks, returns its IoUs
        count = len(range(n)[chunk])
        if low_rank:
            image = LowRankImage.start(products, image_tokens, pe, decoder.transformer, count, tokens.shape[1])
        else:
            image = ExplicitImage(image_tokens if image_tokens.shape[0] == 1 else image_tokens[chunk], pe)
        hs, image = run_transformer(decoder.transformer, image, tokens[chunk])
        hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, iou_index + 1 + i]) for i in wanted], dim=1)
        upscale_masks(decoder, image.projector(w1, b1, "upscale"), hyper_in, (h, w), masks[chunk], kernels, high_res)
        return decoder.iou_prediction_head(hs[:, iou_index])[:, mask_slice]

    # The first chunk first, on all of this thread's cores, when it computes the products that every
    # chunk shares (which the chunks side by side would otherwise wait for). The chunks are the same
    # either way, so a prompt's result does not depend on what the cache held.
    chunks = [slice(start, min(start + PROMPT_CHUNK, n)) for start in range(0, n, PROMPT_CHUNK)]
    ious = [decode_chunk(chunks[0])] if low_rank and len(chunks) > 1 and not products.filled else []
    ious += map_chunks(decode_chunk, chunks[len(ious):], acceleration.workers)
    if selects:
        return decoder.select_masks(masks, torch.cat(ious), multimask_output)
    return masks, torch.cat(ious)


def decode_for_training(decoder, image_embeddings, image_pe, sparse, dense,
                        multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """A frozen trunk under autograd: the transformer and upscaling without a graph, the heads with one."""
    decoder.acceleration.record("upscaling/reference")
    n = sparse.shape[0]
    _, c, h, w = image_embeddings.shape
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    wanted = range(decoder.num_mask_tokens)[mask_slice]
    hs_all, features = [], []
    with torch.no_grad():
        tokens, image_tokens, pe = _prepare(decoder, image_embeddings, image_pe, sparse, dense)
        for start in range(0, n, PROMPT_CHUNK):
            chunk = slice(start, start + PROMPT_CHUNK)
            image = ExplicitImage(image_tokens if image_tokens.shape[0] == 1 else image_tokens[chunk], pe)
            hs, image = run_transformer(decoder.transformer, image, tokens[chunk])
            keys = image.tokens.expand(hs.shape[0], -1, -1)
            features.append(decoder.output_upscaling(keys.transpose(1, 2).reshape(-1, c, h, w)).flatten(2))
            hs_all.append(hs)
        hs, features = torch.cat(hs_all), torch.cat(features)  # N x T x C, N x C/8 x 16hw
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in wanted], dim=1)
    masks = (hyper_in @ features).view(n, len(wanted), 4 * h, 4 * w)
    return masks, decoder.iou_prediction_head(hs[:, 0])[:, mask_slice]



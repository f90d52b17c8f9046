"""A regrouped evaluation of SAM's mask decoder for many prompts on one image.

Same weights, same function as `MaskDecoder.predict_masks`, arranged so the work per prompt is
small. `low_rank_decoder.py` goes further for prompts that share the image tokens (no mask prompt,
float32); this evaluation serves the rest: mask prompts (per-prompt tokens), bf16/fp16 autocast, and
the frozen trunk in training (`training/interactive.py`).

- Without mask prompts every prompt starts from the same image tokens, so the first layer projects
  them once (`share_first_layer`), instead of copying 4096x256 tokens per prompt.
- Later, an attention between the 4096 image tokens and a prompt's handful of tokens is regrouped
  through those few tokens: a projection of the image tokens followed by a product with T tokens
  becomes a product with T projected tokens. Softmax rows sum to one, so value and output biases pass
  through unchanged, and a key bias adds a constant to each softmax row, which cancels.
- The upscaling transposed convolutions (kernel 2, stride 2) act on each token alone: they run as
  matrix products on tiles of tokens that stay in cache, and only the requested masks are formed.

Inference only (no autograd). Results equal the reference's up to float rounding
(tests/test_sam_decoder_fast.py, tests/test_sam_parity.py).
"""

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .common import onednn_fusion_applies
from .transformer import Attention


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    n, t, c = x.shape
    return x.view(n, t, h, c // h).transpose(1, 2)  # n x h x t x d


def tokens_to_image(attn: Attention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (N x T x C) attend to image tokens (1 or N x HW x C)."""
    h = attn.num_heads
    n, t, c = q_in.shape
    q = split_heads(attn.q_proj(q_in), h)  # N x h x T x d
    d = q.shape[-1]
    if k_in.shape[0] == 1 or t * h >= attn.internal_dim:
        k = split_heads(attn.k_proj(k_in), h)
        v = split_heads(attn.v_proj(v_in), h)
        out = torch.softmax((q @ k.transpose(-1, -2)) * d**-0.5, dim=-1) @ v
    else:
        w_k = attn.k_proj.weight.view(h, d, c)
        w_v = attn.v_proj.weight.view(h, d, c)
        a = torch.einsum("nhtd,hdc->nhtc", q, w_k).reshape(n, h * t, c)
        g = torch.softmax((a * d**-0.5) @ k_in.transpose(1, 2), dim=-1) @ v_in  # N x hT x C
        out = torch.einsum("nhtc,hdc->nhtd", g.view(n, h, t, c), w_v) + attn.v_proj.bias.view(1, h, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(n, t, h * d))


@dataclass
class SharedImageTokens:
    """Layer 0's projections of image tokens that every prompt shares (no mask prompt): computed
    once per call instead of once per prompt."""

    k: torch.Tensor  # h x HW x d: tokens-to-image keys
    v: torch.Tensor  # h x HW x d: tokens-to-image values
    q: torch.Tensor  # h x d x HW: image-to-tokens queries


def share_first_layer(transformer, image_tokens: torch.Tensor, image_pe: torch.Tensor) -> SharedImageTokens:
    layer = transformer.layers[0]
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    with_pe = image_tokens + image_pe
    k = split_heads(t2i.k_proj(with_pe), t2i.num_heads)[0]
    v = split_heads(t2i.v_proj(image_tokens), t2i.num_heads)[0]
    q = split_heads(i2t.q_proj(with_pe), i2t.num_heads)[0].transpose(1, 2).contiguous()
    return SharedImageTokens(k, v, q)


def _tokens_to_shared_image(attn: Attention, q_in: torch.Tensor, shared_k: torch.Tensor, shared_v: torch.Tensor) -> torch.Tensor:
    h = attn.num_heads
    n, t, _ = q_in.shape
    q = split_heads(attn.q_proj(q_in), h).transpose(0, 1).reshape(h, n * t, -1)  # h x NT x d
    out = F.scaled_dot_product_attention(q, shared_k, shared_v)  # h x NT x d
    return attn.out_proj(out.view(h, n, t, -1).permute(1, 2, 0, 3).reshape(n, t, -1))


def image_to_tokens(attn: Attention, q_in, k_in: torch.Tensor, v_in: torch.Tensor, residual: torch.Tensor,
                    shared_q: Optional[torch.Tensor] = None) -> torch.Tensor:
    """residual + attention of image tokens (q_in: 1 or N x HW x C, or their shared projection
    shared_q: h x d x HW) to prompt tokens (N x T x C); returns N x HW x C."""
    h = attn.num_heads
    n, t, c = k_in.shape
    k = split_heads(attn.k_proj(k_in), h)  # N x h x T x d
    v = split_heads(attn.v_proj(v_in), h)
    d = k.shape[-1]
    # The output projection folded into the values: N x (h*T) x C.
    u = torch.einsum("nhtd,chd->nhtc", v, attn.out_proj.weight.view(c, h, d)).reshape(n, h * t, c)
    if shared_q is None and q_in.shape[0] == 1:
        shared_q = split_heads(attn.q_proj(q_in), h)[0].transpose(1, 2)
    if shared_q is not None:
        scores = k.transpose(0, 1).reshape(h, n * t, d) @ shared_q  # h x NT x HW
        scores = scores.view(h, n, t, -1).transpose(0, 1)  # N x h x T x HW
    else:
        w_q = attn.q_proj.weight.view(h, d, c)
        b = torch.einsum("hdc,nhtd->nhtc", w_q, k).reshape(n, h * t, c)
        bias = torch.einsum("hd,nhtd->nht", attn.q_proj.bias.view(h, d), k).reshape(n, h * t, 1)
        scores = torch.baddbmm(bias, b, q_in.transpose(1, 2)).view(n, h, t, -1)
    # Softmax over the T prompt tokens of each head; the HW axis stays contiguous (vectorised).
    attn_map = torch.softmax(scores * d**-0.5, dim=2).reshape(n, h * t, -1)
    if torch.is_autocast_enabled(residual.device.type):
        # The product runs in bf16/fp16; the residual stream keeps its own precision.
        return residual + torch.baddbmm(attn.out_proj.bias.view(1, 1, c), attn_map.transpose(1, 2), u)
    return torch.baddbmm((residual + attn.out_proj.bias).expand(n, -1, -1), attn_map.transpose(1, 2), u)


def run_transformer(transformer, image_tokens: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor,
                    shared: Optional[SharedImageTokens] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward on token layouts: image_tokens 1 or N x HW x C, image_pe 1 x HW x C,
    tokens N x T x C. Returns (queries N x T x C, keys N x HW x C)."""
    if shared is None and image_tokens.shape[0] == 1 and len(transformer.layers):
        shared = share_first_layer(transformer, image_tokens, image_pe)
    queries, keys, query_pe = tokens, image_tokens, tokens
    for index, layer in enumerate(transformer.layers):
        queries = layer.token_self_attention(queries, query_pe)
        if index == 0 and shared is not None:
            out = _tokens_to_shared_image(layer.cross_attn_token_to_image, queries + query_pe, shared.k, shared.v)
            queries = layer.norm2(queries + out)
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = image_to_tokens(layer.cross_attn_image_to_token, None, queries + query_pe, queries, keys, shared.q)
        else:
            k = keys + image_pe
            queries = layer.norm2(queries + tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = image_to_tokens(layer.cross_attn_image_to_token, k, queries + query_pe, queries, keys)
        keys = layer.norm4(keys)
    out = tokens_to_image(transformer.final_attn_token_to_image, queries + query_pe, keys + image_pe, keys)
    return transformer.norm_final_attn(queries + out), keys


# Token rows of the image grid per upscaling tile: its intermediates (about 3 MB) stay in cache.
_UPSCALE_TILE_ROWS = 16
# The same with cpu_kernels' loops, whose tiles hold no oneDNN bias column: 8 rows were 1.04x faster
# than 16 for 64 boxes, 4 rows 0.92x (bench/README.md).
_FUSED_TILE_ROWS = 8


def upscaling_weights(decoder) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two kernel-2 stride-2 transposed convolutions as (weight, bias) of token-wise linear maps:
    C_in x C_out x 2 x 2 -> (2*2*C_out) x C_in, rows ordered (a, b, C_out)."""
    conv1, _, _, conv2, _ = decoder.output_upscaling
    w1 = conv1.weight.permute(2, 3, 1, 0).reshape(4 * conv1.out_channels, conv1.in_channels)
    w2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * conv2.out_channels, conv2.in_channels)
    return w1, conv1.bias.repeat(4), w2, conv2.bias.repeat(4)


def _fused_linear_gelu(act: torch.nn.Module, like: torch.Tensor) -> Optional[str]:
    """The GELU's algorithm name when oneDNN's linear with a GELU epilogue applies (common.py), else None."""
    return act.approximate if isinstance(act, torch.nn.GELU) and onednn_fusion_applies(like) else None


def upscale_masks(decoder, keys: Optional[torch.Tensor], mask_tokens: torch.Tensor, grid: Tuple[int, int],
                  first_product: Optional[Callable[[int, int, int], torch.Tensor]] = None,
                  out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Masks from image tokens N x HW x C and mask tokens N x M x C: N x M x 4H x 4W, the same as
    decoder.output_upscaling + hypernetwork product. The kernel-2 stride-2 transposed convolutions
    act on each token alone, so they run as matrix products on tiles of tokens; the first one's
    output is laid out spatially, and the second one's four sub-pixels are written to their strided
    places in the masks (of `out` when given)."""
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    n, m, _ = mask_tokens.shape
    gh, gw = grid
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1, b1, w2, b2 = upscaling_weights(decoder)
    if out is None:
        out = mask_tokens.new_empty(n, m, 4 * gh, 4 * gw)
    masks = out.view(n, m, 2 * gh, 2, 2 * gw, 2)
    kernels = _upscaling_kernels(decoder, keys, mask_tokens)
    if kernels is not None:
        _upscale_fused(kernels, decoder, keys, mask_tokens, grid, first_product, masks, (w1, b1, w2, b2))
        return out
    fused = _fused_linear_gelu(act2, mask_tokens) if w2.dtype == mask_tokens.dtype else None
    if fused is not None:
        # The second product as w2 @ y^T + b2 = [w2 | b2] @ [y | 1]^T, so oneDNN's linear (x @ W^T)
        # gives it transposed with the bias on rows, GELU fused.
        w2_with_bias = torch.cat([w2, b2[:, None]], dim=1)
        tile = mask_tokens.new_empty(_UPSCALE_TILE_ROWS, 2, gw, 2, c1 + 1)
        tile[..., c1] = 1.0
    for i in range(n):
        hyper = mask_tokens[i]  # M x c2
        for row in range(0, gh, _UPSCALE_TILE_ROWS):
            rows = min(_UPSCALE_TILE_ROWS, gh - row)
            if first_product is not None:  # keys @ w1^T + b1 from elsewhere (low_rank_decoder.py)
                y = first_product(i, row * gw, (row + rows) * gw)  # (r, j) x (a, b, c1)
            else:
                y = F.linear(keys[i, row * gw : (row + rows) * gw], w1, b1)
            y = F.layer_norm(y.view(-1, c1), (c1,), norm.weight, norm.bias, norm.eps)
            y = y.view(rows, gw, 2, 2, c1).transpose(1, 2)  # (r, a, j, b): spatial
            # Transposed, so the mask products have the long side last: (a2, b2) x c2 x (2r + a, 2j + b).
            if fused is not None:
                if isinstance(act1, torch.nn.GELU):  # written straight into the tile
                    torch._C._nn.gelu(y, approximate=act1.approximate, out=tile[:rows, ..., :c1])
                else:
                    tile[:rows, ..., :c1] = act1(y)
                z = torch.ops.mkldnn._linear_pointwise(w2_with_bias, tile[:rows].view(-1, c1 + 1), None, "gelu", [], fused)
            else:
                y = act1(y).reshape(-1, c1)
                z = act2(torch.addmm(b2[:, None], w2, y.T))
            values = (hyper @ z.view(4, c2, -1)).view(2, 2, m, 2 * rows, 2 * gw)  # (a2, b2) x M x rows x cols
            masks[i, :, 2 * row : 2 * (row + rows)].permute(2, 4, 0, 1, 3).copy_(values)
    return out


def _upscaling_kernels(decoder, keys: Optional[torch.Tensor], mask_tokens: torch.Tensor):
    """cpu_kernels' loops when they apply: float32 on the CPU, exact GELUs, nothing for autograd."""
    _, _, act1, _, act2 = decoder.output_upscaling
    if not all(isinstance(a, torch.nn.GELU) and a.approximate == "none" for a in (act1, act2)):
        return None
    tensors = [mask_tokens, *decoder.output_upscaling.parameters()] + ([] if keys is None else [keys])
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    from . import cpu_kernels

    return cpu_kernels.load()


def _upscale_fused(kernels, decoder, keys, mask_tokens, grid, first_product, masks, weights) -> None:
    """upscale_masks through cpu_kernels: per tile, LayerNorm and GELU in one loop, the second
    product by torch, its bias, GELU and the hypernetwork product in one loop. weights: upscaling_weights."""
    conv1, norm, _, conv2, _ = decoder.output_upscaling
    n, m, _ = mask_tokens.shape
    gh, gw = grid
    c1, c2 = conv1.out_channels, conv2.out_channels
    w1, b1, w2, b2 = (t.detach() for t in weights)
    weight, bias, b2_np = norm.weight.detach().numpy(), norm.bias.detach().numpy(), b2.numpy()
    eps = np.float32(norm.eps)
    points = 4 * _FUSED_TILE_ROWS * gw  # sub-pixels of a full tile
    tile_buffer = mask_tokens.new_empty(points * c1)
    product_buffer = mask_tokens.new_empty(4 * c2 * points)
    values_buffer = mask_tokens.new_empty(4 * m * points)
    for i in range(n):
        hyper = mask_tokens[i].detach().contiguous().numpy()  # M x c2
        for row in range(0, gh, _FUSED_TILE_ROWS):
            rows = min(_FUSED_TILE_ROWS, gh - row)
            if first_product is not None:
                y = first_product(i, row * gw, (row + rows) * gw)
            else:
                y = F.linear(keys[i, row * gw : (row + rows) * gw], w1, b1)
            size = 4 * rows * gw
            tile = tile_buffer[: size * c1].view(rows, 2, gw, 2, c1)
            kernels.layer_norm_gelu(y.contiguous().numpy(), weight, bias, eps, tile.numpy())
            z = torch.mm(w2, tile.view(size, c1).T, out=product_buffer[: 4 * c2 * size].view(4 * c2, size))
            values = values_buffer[: 4 * m * size].view(4, m, size)
            kernels.gelu_hyper(z.numpy(), b2_np, hyper, values.numpy())
            masks[i, :, 2 * row : 2 * (row + rows)].permute(2, 4, 0, 1, 3).copy_(values.view(2, 2, m, 2 * rows, 2 * gw))

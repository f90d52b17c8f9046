"""A regrouped evaluation of SAM's mask decoder for many prompts on one image.

Same weights, same function as `MaskDecoder.predict_masks`, arranged so the work per prompt is
small:

- Without mask prompts every prompt starts from the same image tokens, so the first layer projects
  them once and broadcasts them, instead of copying 4096x256 tokens per prompt.
- Later, an attention between the 4096 image tokens and a prompt's handful of tokens is regrouped
  through those few tokens: a projection of the image tokens followed by a product with T tokens
  becomes a product with T projected tokens. Softmax rows sum to one, so value and output biases pass
  through unchanged, and a key bias adds a constant to each softmax row, which cancels.
- The upscaling transposed convolutions (kernel 2, stride 2) run as matrix products on the token
  layout, and only the requested masks are formed.

Used for inference (no autograd); the reference-structured path remains for training. Results equal the
reference's up to float rounding (see tests/test_sam_parity.py).
"""

from typing import Tuple

import torch
import torch.nn.functional as F

from .transformer import Attention


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    n, t, c = x.shape
    return x.view(n, t, h, c // h).transpose(1, 2)  # n x h x t x d


def tokens_to_image(attn: Attention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (N x T x C) attend to image tokens (1 or N x HW x C)."""
    h = attn.num_heads
    n, t, c = q_in.shape
    q = _heads(attn.q_proj(q_in), h)  # N x h x T x d
    d = q.shape[-1]
    if k_in.shape[0] == 1 or t * h >= attn.internal_dim:
        k = _heads(attn.k_proj(k_in), h)
        v = _heads(attn.v_proj(v_in), h)
        out = torch.softmax((q @ k.transpose(-1, -2)) * d**-0.5, dim=-1) @ v
    else:
        w_k = attn.k_proj.weight.view(h, d, c)
        w_v = attn.v_proj.weight.view(h, d, c)
        a = torch.einsum("nhtd,hdc->nhtc", q, w_k).reshape(n, h * t, c)
        g = torch.softmax((a * d**-0.5) @ k_in.transpose(1, 2), dim=-1) @ v_in  # N x hT x C
        out = torch.einsum("nhtc,hdc->nhtd", g.view(n, h, t, c), w_v) + attn.v_proj.bias.view(1, h, 1, d)
    return attn.out_proj(out.transpose(1, 2).reshape(n, t, h * d))


def image_to_tokens(attn: Attention, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
    """Image tokens (1 or N x HW x C) attend to prompt tokens (N x T x C); returns N x HW x C."""
    h = attn.num_heads
    n, t, c = k_in.shape
    k = _heads(attn.k_proj(k_in), h)  # N x h x T x d
    v = _heads(attn.v_proj(v_in), h)
    d = k.shape[-1]
    # The output projection folded into the values: N x (h*T) x C.
    u = torch.einsum("nhtd,chd->nhtc", v, attn.out_proj.weight.view(c, h, d)).reshape(n, h * t, c)
    if q_in.shape[0] == 1:
        q = attn.q_proj(q_in)[0].view(-1, h, d).permute(1, 2, 0)  # h x d x HW
        scores = k.transpose(0, 1).reshape(h, n * t, d) @ q  # h x NT x HW
        scores = scores.view(h, n, t, -1).transpose(0, 1)  # N x h x T x HW
    else:
        w_q = attn.q_proj.weight.view(h, d, c)
        b = torch.einsum("hdc,nhtd->nhtc", w_q, k).reshape(n, h * t, c)
        bias = torch.einsum("hd,nhtd->nht", attn.q_proj.bias.view(h, d), k).reshape(n, h * t, 1)
        scores = torch.baddbmm(bias, b, q_in.transpose(1, 2)).view(n, h, t, -1)
    # Softmax over the T prompt tokens of each head; the HW axis stays contiguous (vectorised).
    attn_map = torch.softmax(scores * d**-0.5, dim=2).reshape(n, h * t, -1)
    return torch.baddbmm(attn.out_proj.bias.view(1, 1, c), attn_map.transpose(1, 2), u)


def run_transformer(transformer, image_tokens: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward on token layouts: image_tokens 1 or N x HW x C, image_pe 1 x HW x C,
    tokens N x T x C. Returns (queries N x T x C, keys N x HW x C)."""
    queries, keys, query_pe = tokens, image_tokens, tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        k = keys + image_pe
        queries = layer.norm2(queries + tokens_to_image(layer.cross_attn_token_to_image, queries + query_pe, k, keys))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + image_to_tokens(layer.cross_attn_image_to_token, k, queries + query_pe, queries))
    out = tokens_to_image(transformer.final_attn_token_to_image, queries + query_pe, keys + image_pe, keys)
    return transformer.norm_final_attn(queries + out), keys


def upscale_masks(decoder, keys: torch.Tensor, mask_tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Masks from image tokens N x HW x C and mask tokens N x M x C: N x M x 4H x 4W, the same as
    decoder.output_upscaling + hypernetwork product, with the kernel-2 stride-2 transposed
    convolutions as matrix products on the token layout."""
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    n, hw, c = keys.shape
    gh, gw = grid
    c1, c2 = conv1.out_channels, conv2.out_channels
    # conv1 weight: C x c1 x 2 x 2 -> (2*2*c1) x C, rows ordered (a, b, c1)
    w1 = conv1.weight.permute(2, 3, 1, 0).reshape(4 * c1, c)
    y = F.linear(keys, w1, conv1.bias.repeat(4))
    y = act1(F.layer_norm(y.view(n, hw * 4, c1), (c1,), norm.weight, norm.bias, norm.eps))
    w2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * c2, c1)
    z = act2(F.linear(y, w2, conv2.bias.repeat(4)))
    masks = mask_tokens @ z.view(n, hw * 16, c2).transpose(1, 2)  # N x M x (HW*4*4)
    m = masks.shape[1]
    # index order (i, j, a, b, a2, b2) -> row 4i + 2a + a2, column 4j + 2b + b2
    masks = masks.view(n, m, gh, gw, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return masks.reshape(n, m, 4 * gh, 4 * gw)

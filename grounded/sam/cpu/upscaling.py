"""The mask decoder's upscaling and hypernetwork product, tiled: the same function as
`MaskDecoder.mask_logits` (output_upscaling, then the product with the mask tokens' weights).

The kernel-2 stride-2 transposed convolutions act on each token alone, so they run as matrix
products on tiles of token rows that stay in cache, and only the requested masks are formed (the
reference upscales for every mask token). The first product comes from the image tokens' own form
(`projector`: explicit tokens, or the low-rank form without ever forming the tokens); its output is
laid out spatially, and the second one's four sub-pixels are written to their strided places in the
masks. The elementwise work of a tile (LayerNorm, two GELUs, the hypernetwork product) runs in
kernels.py's compiled loops, one pass each, or as torch operations where numba is missing.
"""

from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# Token rows of the image grid per tile: its intermediates (about 3 MB) stay in cache. With the
# compiled loops, whose tiles hold no bias column, 8 rows were 1.04x faster than 16 for 64 boxes,
# 4 rows 0.92x (bench/README.md).
TILE_ROWS = {"torch": 16, "kernels": 8}


def upscaling_weights(decoder) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two kernel-2 stride-2 transposed convolutions as (weight, bias) of token-wise linear maps:
    C_in x C_out x 2 x 2 -> (2*2*C_out) x C_in, rows ordered (a, b, C_out)."""
    conv1, _, _, conv2, _ = decoder.output_upscaling
    w1 = conv1.weight.permute(2, 3, 1, 0).reshape(4 * conv1.out_channels, conv1.in_channels)
    w2 = conv2.weight.permute(2, 3, 1, 0).reshape(4 * conv2.out_channels, conv2.in_channels)
    return w1, conv1.bias.repeat(4), w2, conv2.bias.repeat(4)


def exact_gelus(decoder) -> bool:
    """The compiled loops compute exact (erf) GELUs: they serve a decoder whose activations are those."""
    _, _, act1, _, act2 = decoder.output_upscaling
    return all(isinstance(a, torch.nn.GELU) and a.approximate == "none" for a in (act1, act2))


def upscale_masks(decoder, first_product: Callable[[int, int, int], torch.Tensor], mask_tokens: torch.Tensor,
                  grid: Tuple[int, int], out: torch.Tensor, kernels: Optional[object],
                  high_res: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """Writes into `out` (N x M x 4H x 4W) the masks of N prompts' M mask tokens (N x M x C/8, the
    hypernetwork outputs), whose image tokens on the H x W grid give the upscaling's first product
    `first_product(i, start, stop)` = (tokens @ w1^T + b1)[i, start:stop]. kernels: kernels.load(),
    or None for torch operations. high_res: SAM 2's projected maps (feat_s0 1 x C/8 x 4H x 4W, feat_s1
    1 x C/4 x 2H x 2W), added after each transposed convolution (before the LayerNorm, the GELU)."""
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    n, m, _ = mask_tokens.shape
    gh, gw = grid
    c1, c2 = conv1.out_channels, conv2.out_channels
    s0 = s1 = None
    if high_res is not None:
        feat_s0, feat_s1 = (f.detach() for f in high_res)
        # feat_s1 in the first product's layout: token (r, j) x sub-pixel (a, b) x channel
        s1 = feat_s1[0].view(c1, gh, 2, gw, 2).permute(1, 3, 2, 4, 0).reshape(gh * gw, 4 * c1)
        # feat_s0 in the second product's: sub-pixel (a2, b2) x channel x the 2H x 2W grid
        s0 = feat_s0[0].view(c2, 2 * gh, 2, 2 * gw, 2).permute(2, 4, 0, 1, 3)
        first_product = _plus_rows(first_product, s1)
    w1, b1, w2, b2 = (t.detach() for t in upscaling_weights(decoder))
    tile_rows = TILE_ROWS["kernels" if kernels is not None else "torch"]
    masks = out.view(n, m, 2 * gh, 2, 2 * gw, 2)
    if kernels is not None:
        weight, bias, b2_np = norm.weight.detach().numpy(), norm.bias.detach().numpy(), b2.numpy()
        eps = np.float32(norm.eps)
        points = 4 * tile_rows * gw  # sub-pixels of a full tile
        tile_buffer = mask_tokens.new_empty(points * c1)
        product_buffer = mask_tokens.new_empty(4 * c2 * points)
        values_buffer = mask_tokens.new_empty(4 * m * points)
    for i in range(n):
        hyper = mask_tokens[i].detach().contiguous()  # M x c2
        for row in range(0, gh, tile_rows):
            rows = min(tile_rows, gh - row)
            y = first_product(i, row * gw, (row + rows) * gw)  # (r, j) x (a, b, c1)
            size = 4 * rows * gw
            if kernels is not None:
                tile = tile_buffer[: size * c1].view(rows, 2, gw, 2, c1)
                kernels.layer_norm_gelu(y.contiguous().numpy(), weight, bias, eps, tile.numpy())
                z = torch.mm(w2, tile.view(size, c1).T, out=product_buffer[: 4 * c2 * size].view(4 * c2, size))
                if s0 is not None:
                    z += s0[:, :, :, 2 * row : 2 * (row + rows)].reshape(4 * c2, size)
                values = values_buffer[: 4 * m * size].view(4, m, size)
                kernels.gelu_hyper(z.numpy(), b2_np, hyper.numpy(), values.numpy())
            else:
                y = F.layer_norm(y.reshape(-1, c1), (c1,), norm.weight, norm.bias, norm.eps)
                y = act1(y.view(rows, gw, 2, 2, c1).transpose(1, 2)).reshape(-1, c1)  # (r, a, j, b): spatial
                # Transposed, so the mask products have the long side last: (a2, b2) x c2 x (2r + a, 2j + b).
                shift = b2[:, None] if s0 is None else b2[:, None] + s0[:, :, :, 2 * row : 2 * (row + rows)].reshape(4 * c2, -1)
                values = hyper @ act2(torch.addmm(shift, w2, y.T)).view(4, c2, -1)
            # (a2, b2) x M x rows x cols into the masks' strided places
            masks[i, :, 2 * row : 2 * (row + rows)].permute(2, 4, 0, 1, 3).copy_(values.view(2, 2, m, 2 * rows, 2 * gw))


def _plus_rows(first_product: Callable[[int, int, int], torch.Tensor], rows: torch.Tensor):
    return lambda i, start, stop: first_product(i, start, stop) + rows[start:stop]

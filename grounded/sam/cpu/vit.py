"""SAM's ViT image encoder (ViT-B/L/H) for float32 inference on a CPU: the same function as
`image_encoder.ImageEncoderViT`, evaluated faster there.

- Linear layers through oneDNN with the bias, GELU or the residual add fused into the product
  (`common.fused_linear`).
- Attention query-blocked: q, k and v gathered per window and head in one copy (the windows'
  padding filled with the qkv bias, which is what the reference's zero-padded tokens project to),
  a few query rows of a few heads at a time, so the logits, their relative-position bias and the
  softmax stay in cache; the output scattered back in one copy. On a CPU the full bias is as large
  as the attention map and its traffic dominates.
"""

from typing import Tuple

import torch

from ..image_encoder import ImageEncoderViT, get_rel_pos
from .common import fused_linear, inference_applies, onednn_available

# Logits per step of the blocked attention: a block stays in the last-level cache while bias and
# softmax run over it.
BLOCK_LOGITS = 1024 * 1024


class AcceleratedImageEncoderViT(ImageEncoderViT):
    """`ImageEncoderViT` whose forward takes the blocked evaluation where the wing applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acceleration = self.acceleration
        if not (acceleration.allows("encoder/vit_blocked") and inference_applies(x)
                and all(blk.attn.use_rel_pos for blk in self.blocks)):
            acceleration.record("encoder/reference")
            return super().forward(x)
        acceleration.record("encoder/vit_blocked")
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            attended = blocked_attention(blk.attn, fused_linear(blk.norm1(x), blk.attn.qkv), blk.window_size)
            x = fused_linear(attended, blk.attn.proj, residual=x)
            x = fused_linear(fused_linear(blk.norm2(x), blk.mlp.lin1, blk.mlp.act), blk.mlp.lin2, residual=x)
        return self.neck(x.permute(0, 3, 1, 2))


def blocked_attention(attn, qkv: torch.Tensor, window_size: int) -> torch.Tensor:
    """Attention of qkv (B x H x W x 3C) before the output projection, in windows when window_size > 0:
    windows gathered per head in one copy, attention query-blocked, scattered back in one copy."""
    B, H, W, _ = qkv.shape
    heads = attn.num_heads
    d = qkv.shape[-1] // (3 * heads)
    wh, ww = (window_size, window_size) if window_size else (H, W)
    nh, nw = -(-H // wh), -(-W // ww)
    parts = qkv.new_empty(3, B, nh, nw, heads, wh, ww, d)
    windows = parts.permute(0, 1, 4, 2, 5, 3, 6, 7)  # 3 x B x heads x nh x wh x nw x ww x d
    copy_grid_windows(qkv.view(B, H, W, 3, heads, d).permute(3, 0, 4, 1, 2, 5), windows, to_windows=True)
    fill = (attn.qkv.bias if attn.qkv.bias is not None else qkv.new_zeros(qkv.shape[-1])).view(3, 1, heads, 1, 1, 1, d)
    if H % wh:
        windows[..., nh - 1, H % wh :, :, :, :] = fill
    if W % ww:
        windows[..., :, :, nw - 1, W % ww :, :] = fill
    q, k, v = parts.view(3, B * nh * nw, heads, wh * ww, d).unbind(0)
    out = rel_pos_attention_blocked(q, k, v, attn.rel_pos_h, attn.rel_pos_w, (wh, ww))
    result = qkv.new_empty(B, H, W, heads, d)
    out_windows = out.view(B, nh, nw, heads, wh, ww, d).permute(0, 3, 1, 4, 2, 5, 6)
    copy_grid_windows(result.permute(0, 3, 1, 2, 4), out_windows, to_windows=False)
    return result.view(B, H, W, heads * d)


def copy_grid_windows(grid: torch.Tensor, windows: torch.Tensor, to_windows: bool) -> None:
    """Copies between a grid (... x H x W x d) and its windows (... x nh x wh x nw x ww x d, the
    windows' padding beyond H and W untouched): at most four strided copies, full and partial windows."""
    H, W = grid.shape[-3:-1]
    nh, wh, nw, ww = windows.shape[-5:-1]
    for i0, i1, rows in _window_spans(H, wh):
        for j0, j1, cols in _window_spans(W, ww):
            win = windows[..., i0:i1, :rows, j0:j1, :cols, :]
            part = grid[..., i0 * wh : i0 * wh + (i1 - i0) * rows, j0 * ww : j0 * ww + (j1 - j0) * cols, :]
            part = part.unflatten(-3, (i1 - i0, rows)).unflatten(-2, (j1 - j0, cols))
            win.copy_(part) if to_windows else part.copy_(win)


def _window_spans(size: int, window: int):
    """(first window, last window + 1, rows used per window) for the full windows and the partial one."""
    full, rest = divmod(size, window)
    return ([(0, full, window)] if full else []) + ([(full, full + 1, rest)] if rest else [])


def rel_pos_attention_blocked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
    size: Tuple[int, int],
) -> torch.Tensor:
    """Attention with decomposed relative positions, a few query rows of a few heads at a time (q, k,
    v: B x nHead x HW x C): the same result as SDPA with the bias as mask, up to float rounding."""
    H, W = size
    B, nH, L, C = q.shape
    Rh = get_rel_pos(H, H, rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(W, W, rel_pos_w).to(q.dtype)
    q = q.reshape(B * nH, L, C)
    r_q = q.view(B * nH, H, W, C)
    rel_h = torch.einsum("ghwc,hkc->ghwk", r_q, Rh)  # (B*nH) x H x W x H(keys)
    rel_w = torch.einsum("ghwc,wkc->ghwk", r_q, Rw)  # (B*nH) x H x W x W(keys)
    v = v.reshape(B * nH, L, C)
    out = torch.empty_like(q)
    # The scale goes on q once (exact when head_dim is a power of 4, as 64); the biases used unscaled q.
    q = q * C**-0.5
    rows = max(1, min(H, BLOCK_LOGITS // (W * L)))
    groups = max(1, BLOCK_LOGITS // (rows * W * L))
    # Global attention, one head per step: oneDNN's linear (x @ W^T) ran these products 10-25% faster
    # than bmm here; windows, several at a time, through bmm.
    onednn = groups == 1 and onednn_available()
    if onednn:
        k, v_t = k.reshape(B * nH, L, C).contiguous(), v.transpose(1, 2).contiguous()  # v_t: (B*nH) x C x HW
        linear = torch.ops.mkldnn._linear_pointwise
    else:
        k_t = k.reshape(B * nH, L, C).transpose(1, 2).contiguous()  # (B*nH) x C x HW
    for g0 in range(0, B * nH, groups):
        g = slice(g0, g0 + groups)
        for r0 in range(0, H, rows):
            r1 = min(H, r0 + rows)
            rows_q = q[g, r0 * W : r1 * W]
            logits = linear(rows_q, k[g0], None, "none", [], "") if onednn else torch.bmm(rows_q, k_t[g])
            view = logits.view(-1, r1 - r0, W, H, W)
            view.add_(rel_h[g, r0:r1, :, :, None]).add_(rel_w[g, r0:r1, :, None, :])
            probs = torch.softmax(logits, dim=-1)
            if onednn:
                out[g, r0 * W : r1 * W] = linear(probs, v_t[g0], None, "none", [], "")
            else:
                out[g, r0 * W : r1 * W] = torch.bmm(probs, v[g])
    return out.view(B, nH, L, C)

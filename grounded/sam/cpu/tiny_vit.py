"""MobileSAM's TinyViT encoder for float32 inference on a CPU, and the layout its ONNX export takes:
the same function as `tiny_vit.TinyViT` in both cases.

For eager inference: batch norms folded into their convolutions (one pass over the activations
instead of two), the convolutional stages channels-last (the depthwise 3x3 convolutions above all
ran 2-3x faster so), linear layers through oneDNN with GELU and residual adds fused
(`common.fused_linear`; 1.16x on the whole encoder), and window attention as an explicit softmax
(CPU SDPA with a mask broadcast over windows takes an unfused path, twice as slow here).

For the ONNX export (`export_layout`, used by `onnx_encoder.export_encoder`): MLPs and qkv as 1x1
convolutions over the tokens laid out as a channels-last column, which onnxruntime runs in its
blocked convolution layout (10-15% faster than two Gemms here); 4-D permutes it folds into its
layout reorders (16 fewer Transposes); the neck's channel layer norms as ONNX LayerNormalization.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..tiny_vit import MBConv, TinyViT, window_partition, window_unpartition
from .common import fused_linear, inference_applies


class AcceleratedTinyViT(TinyViT):
    """`TinyViT` whose forward takes the folded, fused evaluation where the wing applies."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acceleration = self.acceleration
        if self.training or not (acceleration.allows("encoder/tiny_vit_fused") and inference_applies(x)):
            acceleration.record("encoder/reference")
            return super().forward(x)
        acceleration.record("encoder/tiny_vit_fused")
        return evaluate(self, x, export=False)


class TinyViTForExport(TinyViT):
    """`TinyViT` in the layout its ONNX export takes (see `export_layout`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return evaluate(self, x, export=True)


@contextlib.contextmanager
def export_layout(encoder: nn.Module):
    """Within the block, a TinyViT `encoder` evaluates in its export layout (other encoders as they are)."""
    if not isinstance(encoder, TinyViT):
        yield encoder
        return
    cls = encoder.__class__
    encoder.__class__ = TinyViTForExport
    try:
        yield encoder
    finally:
        encoder.__class__ = cls


def evaluate(encoder: TinyViT, x: torch.Tensor, export: bool) -> torch.Tensor:
    """TinyViT's forward with folded batch norms; fused linears (export=False) or the export layout."""
    x = x.contiguous(memory_format=torch.channels_last)
    for part in encoder.patch_embed.seq:
        x = conv_bn(part, x) if hasattr(part, "bn") else part(x)
    for layer in encoder.layers:
        for blk in layer.blocks:
            x = mbconv(blk, x) if isinstance(blk, MBConv) else block(blk, x, export)
        if layer.downsample is not None:
            x = patch_merging(layer.downsample, x, export)
    B, _, C = x.shape
    x = x.view(B, encoder.feature_size[0], encoder.feature_size[1], C).permute(0, 3, 1, 2)
    if not export:
        return encoder.neck(x)
    conv1, norm1, conv2, norm2 = encoder.neck
    for conv, norm in ((conv1, norm1), (conv2, norm2)):
        x = conv(x).permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
    return x


def conv_bn(m, x: torch.Tensor) -> torch.Tensor:
    """A `Conv2d_BN` at inference, its batch norm folded into the convolution."""
    c, bn = m.c, m.bn
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = c.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, bn.bias - bn.running_mean * scale, c.stride, c.padding, c.dilation, c.groups)


def mbconv(m, x: torch.Tensor) -> torch.Tensor:
    shortcut = x
    x = m.act1(conv_bn(m.conv1, x))
    x = m.act2(conv_bn(m.conv2, x))
    return m.act3(conv_bn(m.conv3, x) + shortcut)


def patch_merging(m, x: torch.Tensor, export: bool) -> torch.Tensor:
    if x.ndim == 3:  # B x L x C tokens -> B x C x H x W
        H, W = m.input_resolution
        x = x.view(len(x), H, W, -1).permute(0, 3, 1, 2)
    x = m.act(conv_bn(m.conv1, x))
    x = m.act(conv_bn(m.conv2, x))
    x = conv_bn(m.conv3, x)
    return x.permute(0, 2, 3, 1).flatten(1, 2) if export else x.flatten(2).transpose(1, 2)


def block(m, x: torch.Tensor, export: bool) -> torch.Tensor:
    """A `TinyViTBlock` at inference (drop path is the identity)."""
    H, W = m.input_resolution
    B, L, C = x.shape
    if H == m.window_size and W == m.window_size:
        attended = attention(m.attn, x, export)
    else:
        windows, padded = window_partition(x.view(B, H, W, C), m.window_size)
        attended = window_unpartition(attention(m.attn, windows, export), m.window_size, padded, (H, W)).view(B, L, C)
    x = x + attended
    if export:  # 4-D permutes, which onnxruntime folds into its convolution's layout reorders
        x = conv_bn(m.local_conv, x.view(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(B, L, C)
        mlp = m.mlp
        column = _as_column(mlp.norm(x))
        return x + _from_column(_pointwise(mlp.act(_pointwise(column, mlp.fc1)), mlp.fc2), x.shape[:-1])
    x = conv_bn(m.local_conv, x.transpose(1, 2).reshape(B, C, H, W)).view(B, C, L).transpose(1, 2)
    return fused_linear(fused_linear(m.mlp.norm(x), m.mlp.fc1, m.mlp.act), m.mlp.fc2, residual=x)


def attention(m, x: torch.Tensor, export: bool) -> torch.Tensor:
    B, N, _ = x.shape
    if export:
        qkv = _from_column(_pointwise(_as_column(m.norm(x)), m.qkv), x.shape[:-1])
    else:
        qkv = fused_linear(m.norm(x), m.qkv)
    q, k, v = qkv.view(B, N, m.num_heads, -1).split([m.key_dim, m.key_dim, m.d], dim=3)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B x nH x N x d
    bias = m.attention_biases[:, m.attention_bias_idxs]  # nH x N x N
    x = torch.softmax((q * m.key_dim**-0.5) @ k.transpose(-2, -1) + bias, dim=-1) @ v
    x = x.transpose(1, 2).reshape(B, N, m.dh)
    return m.proj(x) if export else fused_linear(x, m.proj)


def _as_column(tokens: torch.Tensor) -> torch.Tensor:  # ... x C tokens -> 1 x C x tokens x 1, channels-last
    return tokens.reshape(1, -1, 1, tokens.shape[-1]).permute(0, 3, 1, 2)


def _from_column(column: torch.Tensor, lead) -> torch.Tensor:  # the inverse of _as_column
    return column.permute(0, 2, 3, 1).reshape(*lead, -1)


def _pointwise(column: torch.Tensor, linear: nn.Linear) -> torch.Tensor:  # `linear` as a 1x1 convolution
    return F.conv2d(column, linear.weight[:, :, None, None], linear.bias)

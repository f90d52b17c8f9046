"""TinyViT, MobileSAM's image encoder (`vit_t`), with the state-dict names of MobileSAM's
`tiny_vit_sam.py` so the official `mobile_sam.pt` loads unchanged. Window attention uses
`scaled_dot_product_attention` with the learned per-offset bias as its additive mask. While exporting
to ONNX (`torch.onnx.is_in_onnx_export()`), some modules take a layout onnxruntime runs faster: the
same function, checked in tests/test_sam_onnx_encoder.py; the PyTorch path is untouched."""

import itertools
from functools import partial
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, linear


class Conv2d_BN(nn.Sequential):
    """Convolution without bias followed by batch norm (names `c` and `bn`, as in TinyViT)."""

    def __init__(self, a, b, ks=1, stride=1, pad=0, dilation=1, groups=1, bn_weight_init=1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)

    def forward(self, x):
        if self.training:
            return self.bn(self.c(x))
        # Inference folds the batch norm into the convolution: one pass over x instead of two.
        c, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = c.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, in_chans, embed_dim, resolution, activation):
        super().__init__()
        self.patches_resolution = (resolution // 4, resolution // 4)
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            activation(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x):
        return self.seq(x)


class MBConv(nn.Module):
    def __init__(self, in_chans, out_chans, expand_ratio, activation, drop_path):
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2d_BN(in_chans, hidden, ks=1)
        self.act1 = activation()
        self.conv2 = Conv2d_BN(hidden, hidden, ks=3, stride=1, pad=1, groups=hidden)
        self.act2 = activation()
        self.conv3 = Conv2d_BN(hidden, out_chans, ks=1, bn_weight_init=0.0)
        self.act3 = activation()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x):
        shortcut = x
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.drop_path(self.conv3(x))
        return self.act3(x + shortcut)


class PatchMerging(nn.Module):
    def __init__(self, input_resolution, dim, out_dim, activation, stride=2):
        super().__init__()
        self.input_resolution = input_resolution
        self.act = activation()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x):
        if x.ndim == 3:  # B x L x C tokens -> B x C x H x W
            H, W = self.input_resolution
            x = x.view(len(x), H, W, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        if torch.onnx.is_in_onnx_export():  # see TinyViTBlock.forward
            return x.permute(0, 2, 3, 1).flatten(1, 2)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, activation, drop_path=0.0, downsample=None,
                 out_dim=None, conv_expand_ratio=4.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            MBConv(dim, dim, conv_expand_ratio, activation, drop_path[i] if isinstance(drop_path, list) else drop_path)
            for i in range(depth)
        )
        self.downsample = (
            downsample(input_resolution, dim=dim, out_dim=out_dim, activation=activation) if downsample else None
        )

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU):
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = act_layer()

    def forward(self, x, residual=None):
        """fc2(act(fc1(norm(x)))), plus residual when given (fused into fc2 where common.linear can)."""
        if torch.onnx.is_in_onnx_export():
            out = self._forward_for_export(x)
            return out if residual is None else residual + out
        return linear(linear(self.norm(x), self.fc1, self.act), self.fc2, residual=residual)

    def _forward_for_export(self, x):
        # The same MLP as two 1x1 convolutions over the tokens laid out as a channels-last column:
        # onnxruntime runs fc1, GELU and fc2 in its blocked convolution layout (10-15% faster than
        # two Gemms here) and folds the permutes into that layout's reorders. (The attention's qkv
        # gains from this too; its output projection, between transposes, does not.)
        column = _as_column(self.norm(x))
        return _from_column(_pointwise(self.act(_pointwise(column, self.fc1)), self.fc2), x.shape[:-1])


def _as_column(tokens):  # ... x C tokens -> 1 x C x tokens x 1, a channels-last view
    return tokens.reshape(1, -1, 1, tokens.shape[-1]).permute(0, 3, 1, 2)


def _from_column(column, lead):  # the inverse of _as_column, for tokens of shape lead x C
    return column.permute(0, 2, 3, 1).reshape(*lead, -1)


def _pointwise(column, linear: nn.Linear):  # `linear` as a 1x1 convolution
    return F.conv2d(column, linear.weight[:, :, None, None], linear.bias)


class Attention(nn.Module):
    """Window attention with a learned bias per (|dy|, |dx|) offset."""

    def __init__(self, dim, key_dim, num_heads=8, attn_ratio=4, resolution=(14, 14)):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, self.dh + key_dim * num_heads * 2)
        self.proj = nn.Linear(self.dh, dim)
        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets, idxs = {}, []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                idxs.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idxs).view(len(points), len(points)), persistent=False)

    def forward(self, x):  # B x N x C
        B, N, _ = x.shape
        if torch.onnx.is_in_onnx_export():  # see Mlp._forward_for_export
            qkv = _from_column(_pointwise(_as_column(self.norm(x)), self.qkv), x.shape[:-1])
        else:
            qkv = linear(self.norm(x), self.qkv)
        qkv = qkv.view(B, N, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B x nH x N x d
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # nH x N x N
        if x.device.type == "cpu":
            # With a mask broadcast over windows, CPU SDPA takes its unfused path: twice as slow here.
            x = torch.softmax((q * self.key_dim**-0.5) @ k.transpose(-2, -1) + bias, dim=-1) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return linear(x.transpose(1, 2).reshape(B, N, self.dh), self.proj)


class TinyViTBlock(nn.Module):
    def __init__(self, dim, input_resolution, num_heads, window_size=7, mlp_ratio=4.0, drop_path=0.0,
                 local_conv_size=3, activation=nn.GELU):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, dim // num_heads, num_heads, attn_ratio=1, resolution=(window_size, window_size))
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=activation)
        self.local_conv = Conv2d_BN(dim, dim, ks=local_conv_size, stride=1, pad=local_conv_size // 2, groups=dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x):  # B x L x C
        H, W = self.input_resolution
        B, L, C = x.shape
        ws = self.window_size
        res_x = x
        if H == ws and W == ws:
            x = self.attn(x)
        else:
            x = x.view(B, H, W, C)
            pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
            pH, pW = H + pad_b, W + pad_r
            nH, nW = pH // ws, pW // ws
            x = x.view(B, nH, ws, nW, ws, C).transpose(2, 3).reshape(B * nH * nW, ws * ws, C)
            x = self.attn(x)
            x = x.view(B, nH, nW, ws, ws, C).transpose(2, 3).reshape(B, pH, pW, C)
            if pad_b or pad_r:
                x = x[:, :H, :W].contiguous()
            x = x.view(B, L, C)
        x = res_x + self.drop_path(x)
        if torch.onnx.is_in_onnx_export():
            # The same tensors through 4-D permutes rather than 3-D transposes: onnxruntime folds
            # these into its convolution's channels-last layout reorders (16 fewer Transposes in the
            # encoder). Export only: in PyTorch the other form keeps the strides, and so the
            # numerics, the encoder always had.
            x = self.local_conv(x.view(B, H, W, C).permute(0, 3, 1, 2))
            x = x.permute(0, 2, 3, 1).reshape(B, L, C)
        else:
            x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W))
            x = x.view(B, C, L).transpose(1, 2)
        if not self.training or isinstance(self.drop_path, nn.Identity):  # DropPath is the identity in eval
            return self.mlp(x, residual=x)
        return x + self.drop_path(self.mlp(x))


class BasicLayer(nn.Module):
    def __init__(self, dim, input_resolution, depth, num_heads, window_size, mlp_ratio=4.0, drop_path=0.0,
                 downsample=None, local_conv_size=3, activation=nn.GELU, out_dim=None):
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim, input_resolution, num_heads, window_size, mlp_ratio,
                drop_path[i] if isinstance(drop_path, list) else drop_path, local_conv_size, activation,
            )
            for i in range(depth)
        )
        self.downsample = (
            downsample(input_resolution, dim=dim, out_dim=out_dim, activation=activation) if downsample else None
        )

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ):
        super().__init__()
        self.img_size = img_size
        self.depths = list(depths)
        activation = nn.GELU
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], img_size, activation)
        res = self.patch_embed.patches_resolution
        n_blocks = sum(depths)
        dpr: List[float] = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            # MobileSAM's last stage does not downsample: it keeps stage 3's resolution (64x64 tokens
            # at 1024 px), so the merge into it has stride 1 (MobileSAM tests out_dim in (320, 448, 576),
            # the last-stage widths of TinyViT-5M/11M/21M).
            scale = 2 ** (i - 1 if i == 3 else i)
            last_merge = i == len(depths) - 2
            kwargs = dict(
                dim=embed_dims[i],
                input_resolution=(res[0] // scale, res[1] // scale),
                depth=depth,
                drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=partial(PatchMerging, stride=1 if last_merge else 2) if i < len(depths) - 1 else None,
                out_dim=embed_dims[min(i + 1, len(embed_dims) - 1)],
                activation=activation,
            )
            if i == 0:
                self.layers.append(ConvLayer(conv_expand_ratio=mbconv_expand_ratio, **kwargs))
            else:
                self.layers.append(BasicLayer(num_heads=num_heads[i], window_size=window_sizes[i], mlp_ratio=mlp_ratio,
                                              local_conv_size=local_conv_size, **kwargs))
        self.feature_size: Tuple[int, int] = (res[0] // 4, res[1] // 4)
        # Classification head of the ImageNet pre-training: unused, kept so checkpoints load strictly.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x):  # B x 3 x img_size x img_size -> B x out_chans x img_size/16 x img_size/16
        # The convolutional stages (depthwise 3x3 above all) run 2-3x faster channels-last on the CPU;
        # the attention stages' token layout is channels-last already.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        x = x.view(B, self.feature_size[0], self.feature_size[1], C).permute(0, 3, 1, 2)
        if torch.onnx.is_in_onnx_export():
            return self._neck_for_export(x)
        return self.neck(x)

    def _neck_for_export(self, x):
        # The neck's channel layer norms as ONNX LayerNormalization over channels-last tensors (one
        # fused kernel instead of the seven elementwise ops LayerNorm2d exports to); onnxruntime folds
        # the permutes into its convolutions' layout reorders. Same function, export only, so the
        # PyTorch encoder's numerics stay as they are.
        conv1, norm1, conv2, norm2 = self.neck
        for conv, norm in ((conv1, norm1), (conv2, norm2)):
            x = conv(x).permute(0, 2, 3, 1)
            x = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)
        return x

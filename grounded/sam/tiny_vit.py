"""TinyViT, MobileSAM's image encoder (`vit_t`), with the state-dict names of MobileSAM's
`tiny_vit_sam.py` so the official `mobile_sam.pt` loads unchanged. Window attention uses
`scaled_dot_product_attention` with the learned per-offset bias as its additive mask. (The CPU wing
folds the batch norms and fuses the linear layers: grounded/sam/cpu/tiny_vit.py, which also holds
the layout the ONNX export takes.)"""

import itertools
from functools import partial
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class Conv2d_BN(nn.Sequential):
    """Convolution without bias followed by batch norm (names `c` and `bn`, as in TinyViT)."""

    def __init__(self, a, b, ks=1, stride=1, pad=0, dilation=1, groups=1, bn_weight_init=1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, dilation, groups, bias=False))
        bn = nn.BatchNorm2d(b)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0)
        self.add_module("bn", bn)


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

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.norm(x))))


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
        qkv = self.qkv(self.norm(x)).view(B, N, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.d], dim=3)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B x nH x N x d
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # nH x N x N
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.dh))


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
        res_x = x
        if H == self.window_size and W == self.window_size:
            x = self.attn(x)
        else:
            windows, padded = window_partition(x.view(B, H, W, C), self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded, (H, W)).view(B, L, C)
        x = res_x + self.drop_path(x)
        x = self.local_conv(x.transpose(1, 2).reshape(B, C, H, W))
        x = x.view(B, C, L).transpose(1, 2)
        return x + self.drop_path(self.mlp(x))


def window_partition(x, ws):
    """B x H x W x C -> (B * windows) x ws*ws x C, H and W zero-padded up to multiples of ws;
    returns the windows and the padded size."""
    B, H, W, C = x.shape
    pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    pH, pW = H + pad_b, W + pad_r
    return x.view(B, pH // ws, ws, pW // ws, ws, C).transpose(2, 3).reshape(-1, ws * ws, C), (pH, pW)


def window_unpartition(windows, ws, padded, size):
    """The inverse of `window_partition`: B x H x W x C without the padding."""
    (pH, pW), (H, W) = padded, size
    C = windows.shape[-1]
    x = windows.view(-1, pH // ws, pW // ws, ws, ws, C).transpose(2, 3).reshape(-1, pH, pW, C)
    return x[:, :H, :W].contiguous() if (pH, pW) != (H, W) else x


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
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        B, _, C = x.shape
        x = x.view(B, self.feature_size[0], self.feature_size[1], C).permute(0, 3, 1, 2)
        return self.neck(x)

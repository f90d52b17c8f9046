"""SAM 2's image encoder: the Hiera trunk and an FPN neck that brings every stage to d_model channels,
adding the upsampled coarser level on the levels in `fpn_top_down_levels`."""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .hieradet import Hiera


class FpnNeck(nn.Module):
    """1x1 lateral convolutions, nearest top-down fusion (by sum). The official neck also returns sine
    position encodings, which only video memory uses; they have no weights and are not computed."""

    def __init__(self, d_model: int, backbone_channel_list: Sequence[int],
                 fpn_top_down_levels: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        out: List[Optional[torch.Tensor]] = [None] * len(self.convs)
        prev = None
        n = len(self.convs) - 1
        for i in range(n, -1, -1):  # coarsest first
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(prev.to(dtype=torch.float32), scale_factor=2.0, mode="nearest")
                prev = lateral + top_down
            else:
                prev = lateral
            out[i] = prev
        return out


class ImageEncoder(nn.Module):
    """Trunk + neck; `forward` returns the neck's levels, finest first, without the `scalp` coarsest."""

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 0, img_size: int = 1024) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk channels {trunk.channel_list} do not match the neck's {neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        self.img_size = img_size

    def forward(self, sample: torch.Tensor) -> List[torch.Tensor]:
        features = self.neck(self.trunk(sample))
        return features[: -self.scalp] if self.scalp > 0 else features

"""SAM 2's two-way transformer: SAM's, with the token MLP named as SAM 2 names it (`mlp.layers.*`)."""

from typing import Type

from torch import nn

from ..sam.transformer import TwoWayTransformer as SamTwoWayTransformer
from .hieradet import MLP


class TwoWayTransformer(SamTwoWayTransformer):
    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 activation: Type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2) -> None:
        super().__init__(depth, embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate)
        for layer in self.layers:
            layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)

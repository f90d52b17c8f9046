"""The masked autoencoder (He et al., 2021) as the official code builds it: a ViT encoder that sees
only the visible patches, a light decoder that fills in the masked ones, and the loss on the masked
patches' pixels. State-dict names are the official `models_mae.py`'s (timm's ViT blocks), so
`mae_pretrain_vit_*.pth` files load unchanged; transformers' ViTMAE layout is converted in `load.py`."""

import dataclasses
import json
from dataclasses import dataclass
from typing import Dict, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .masking import patchify, random_masking


@dataclass
class MAEConfig:
    """The dimensions of an MAE: encoder, decoder and input. `mlp_ratio` and `norm_eps` apply to both."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.patch_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for dim, heads, where in ((self.embed_dim, self.num_heads, "encoder"),
                                  (self.decoder_embed_dim, self.decoder_num_heads, "decoder")):
            if heads < 1 or dim % heads or dim % 4:
                raise ValueError(f"{where} width {dim} must be a multiple of 4 and of its {heads} heads")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Dict) -> "MAEConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown MAEConfig fields {unknown}; known fields: {sorted(names)}")
        return cls(**data)


# The official models (models_mae.py: ViT-B/16, L/16, H/14, decoder 512 wide, 8 deep) and small ones
# for modest hardware (ViT-S and ViT-Ti widths with a 4- and 2-block decoder).
PRESETS: Dict[str, MAEConfig] = {
    "vit_base": MAEConfig(),
    "vit_large": MAEConfig(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": MAEConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    "vit_small": MAEConfig(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4,
                           decoder_num_heads=8),
    "vit_tiny": MAEConfig(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=2,
                          decoder_num_heads=4),
}


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine position embedding: (cls + grid*grid) x dim, the cls row zeros.
    Half the channels encode the row, half the column, each as sin then cos over 10000^(-k/(dim/4))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def encode(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # The official code hands meshgrid's first output (the column index) to the first half.
    emb = np.concatenate([encode(cols), encode(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


class PatchEmbed(nn.Module):
    """B x C x H x W -> B x (H/p * W/p) x D, patches in row-major order."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block (timm's, as MAE uses it)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MAEOutput(NamedTuple):
    pred: torch.Tensor  # B x L x p*p*C: every patch's reconstruction (the loss reads the masked ones)
    mask: torch.Tensor  # B x L: 1 masked, 0 visible
    ids_restore: torch.Tensor  # B x L: where each patch went in the shuffle
    latent: torch.Tensor  # B x (1 + visible) x D: the encoder's output, cls token first


class MaskedAutoencoder(nn.Module):
    def __init__(self, config: MAEConfig):
        super().__init__()
        c = self.config = config
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        # Fixed (not trained), as in the official code; kept in the state dict under the same names.
        self.pos_embed = nn.Parameter(sincos_pos_embed(c.embed_dim, c.grid_size)[None], requires_grad=False)
        self.blocks = nn.ModuleList(Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.norm_eps) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.norm_eps)

        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(c.decoder_embed_dim, c.grid_size)[None],
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, c.norm_eps)
                                            for _ in range(c.decoder_depth))
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=c.norm_eps)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, c.patch_size**2 * c.in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The official initialisation: xavier-uniform linears (the patch projection seen as one),
        zero biases, unit LayerNorms, N(0, 0.02) cls and mask tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, images: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None,
                        generator: Optional[torch.Generator] = None):
        x = self.patch_embed(images) + self.pos_embed[:, 1:]  # B x L x D
        x, mask, ids_restore = random_masking(x, mask_ratio, noise, generator)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # B x (1 + visible) x D
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        B, L = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(B, L - x.shape[1] + 1, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # unshuffled
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # B x L x p*p*C, cls dropped

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.75, noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> MAEOutput:
        """images: B x C x H x W, normalised, at config.image_size. `noise` (B x L) decides the mask
        (the lowest-noise patches stay visible), else uniform noise drawn from `generator`."""
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.config.in_chans, size, size):
            raise ValueError(f"expected images of shape B x {self.config.in_chans} x {size} x {size}, "
                             f"got {tuple(images.shape)}")
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, noise, generator)
        return MAEOutput(self.forward_decoder(latent, ids_restore), mask, ids_restore, latent)

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True) -> torch.Tensor:
        """Mean squared error on the masked patches; with norm_pix_loss the target is each patch
        normalised by its own mean and (unbiased) variance, as the official code does."""
        return (reconstruction_error(images, pred, self.config.patch_size, norm_pix_loss) * mask).sum() / mask.sum()


def patch_targets(images: torch.Tensor, patch_size: int, norm_pix_loss: bool) -> torch.Tensor:
    """The reconstruction targets B x L x p*p*C: the patches, normalised per patch if asked."""
    target = patchify(images, patch_size).float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return target


def reconstruction_error(images: torch.Tensor, pred: torch.Tensor, patch_size: int, norm_pix_loss: bool) -> torch.Tensor:
    """Per-patch mean squared error B x L (all patches; the loss keeps the masked ones)."""
    return ((pred.float() - patch_targets(images, patch_size, norm_pix_loss)) ** 2).mean(dim=-1)

"""The dimensions of a SAM model, as one dataclass (the official variants and tiny test models alike)."""

import dataclasses
import json
from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass
class SamConfig:
    encoder: str = "vit"  # "vit" (SAM ViT-B/L/H) or "tiny_vit" (MobileSAM)
    image_size: int = 1024
    # ViT encoder
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    # TinyViT encoder
    tiny_embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    tiny_depths: Tuple[int, ...] = (2, 2, 6, 2)
    tiny_num_heads: Tuple[int, ...] = (2, 4, 5, 10)
    tiny_window_sizes: Tuple[int, ...] = (7, 7, 14, 7)
    tiny_num_classes: int = 1000
    # prompt encoder and mask decoder
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: Tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: Tuple[float, float, float] = (58.395, 57.12, 57.375)

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // 16

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Dict) -> "SamConfig":
        return config_from_dict(cls, data)


def config_from_dict(cls, data: Dict):
    """A config dataclass from its JSON dict (lists back to tuples), naming unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


OFFICIAL_CONFIGS: Dict[str, SamConfig] = {
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12,
                       encoder_global_attn_indexes=(2, 5, 8, 11)),
    "vit_t": SamConfig(encoder="tiny_vit"),
}

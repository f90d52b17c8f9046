"""The dimensions of a SAM 2 / 2.1 image model, as one dataclass (the official sizes and tiny test models alike).

Only the image path is described: the Hiera trunk, the FPN neck and SAM's prompt encoder and mask
decoder. Video memory (memory attention, memory encoder, object pointers) is not built: its weights
in an official checkpoint are set aside when loading (`build.py`)."""

import dataclasses
import json
from dataclasses import dataclass
from typing import Dict, Optional, Tuple


@dataclass
class Sam2Config:
    # Hiera trunk
    embed_dim: int = 96
    num_heads: int = 1
    stages: Tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: Tuple[int, ...] = (5, 7, 9)
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: Tuple[int, int] = (7, 7)
    q_pool: int = 3
    # FPN neck (output levels 0 and 1 take the backbone features directly; nearest top-down)
    d_model: int = 256
    fpn_top_down_levels: Tuple[int, ...] = (2, 3)
    scalp: int = 1
    image_size: int = 1024
    # prompt encoder and mask decoder (SAM's, with the high-resolution features and object-score head)
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    # the official image builder's post-processing: a single unstable mask falls back to the best of three
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    @property
    def backbone_channel_list(self) -> Tuple[int, ...]:
        """The trunk's output channels, lowest resolution first (the neck's order)."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.stages)))[::-1]

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // 16

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps({"family": "sam2", **self.to_dict()}, indent=2)

    @classmethod
    def from_dict(cls, data: Dict) -> "Sam2Config":
        from ..sam.config import config_from_dict

        return config_from_dict(cls, {k: v for k, v in data.items() if k != "family"})


# The image parts of the official configs (sam2/configs/sam2.1/*.yaml; SAM 2.0's are the same).
OFFICIAL_CONFIGS: Dict[str, Sam2Config] = {
    "hiera_tiny": Sam2Config(),
    "hiera_small": Sam2Config(stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "hiera_base_plus": Sam2Config(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                                  window_pos_embed_bkg_spatial_size=(14, 14)),
    "hiera_large": Sam2Config(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                              window_spec=(8, 4, 16, 8)),
}


def official_size(config: Sam2Config) -> Optional[str]:
    """The official size ('hiera_tiny', ...) whose dimensions equal config's, if any."""
    for name, official in OFFICIAL_CONFIGS.items():
        if official == config:
            return name
    return None

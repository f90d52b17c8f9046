"""The training configuration: a dataclass read from YAML, every key checked.

    model: mobile_sam                 # anything grounded.sam.from_pretrained or grounded.sam2.from_pretrained takes
    data:
      - {type: coco, annotations: train.json, images: images/}
    out_dir: runs/nuclei
    steps: 200
    lr: 1.0e-4
    trainable: [mask_decoder]
    interactive: {point_rounds: 8, no_point_rounds: 2, box_prob: 0.5}

Relative paths are resolved from the YAML file's folder.
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from .interactive import InteractiveConfig

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    model: str = "mobile_sam"
    data: List[Dict[str, Any]] = field(default_factory=list)
    out_dir: str = "runs/train"
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    decay_steps: List[int] = field(default_factory=list)  # the lr is multiplied by decay_factor at each
    decay_factor: float = 0.1
    layer_decay: float = 1.0  # < 1: image-encoder block i of L trains at lr * layer_decay ** (L + 1 - i)
    freeze_image_encoder: bool = True
    trainable: List[str] = field(default_factory=lambda: ["mask_decoder"])  # module name prefixes
    embedding_cache: Optional[str] = None  # folder for the frozen encoder's embeddings (default out_dir/embeddings)
    precision: str = "fp32"  # autocast dtype: fp32 (off), bf16, fp16 (CUDA)
    grad_accum: int = 1  # images per optimizer step
    max_masks: int = 64  # masks sampled per image
    max_mask_fraction: float = 0.9  # masks covering more of the image are dropped
    interactive: InteractiveConfig = field(default_factory=InteractiveConfig)
    # Text-prompt training (SAM paper 7.5): train a TextPromptProjection on CLIP image embeddings of
    # mask crops instead of the interactive loop; saved to out_dir/text_prompt for the `native` text mode.
    text_prompt: bool = False
    clip: Optional[str] = None  # what grounded.clip.load_clip takes (name, folder, hub id)
    clip_pretrained: Optional[str] = None
    text_crop_expand: List[float] = field(default_factory=lambda: [1.0, 2.0])
    text_zero_outside: float = 0.5
    text_lr_scale: float = 1.0  # the projection's lr = lr x this (it starts from scratch; SAM does not)
    # The locator: a heat map of where the CLIP embedding's object is, its peak a point prompt (see
    # grounded.sam.text_prompt; without it the decoder does not choose the named object). Its lr is
    # lr x text_locator_lr_scale: one bilinear layer from scratch, 30 x 1e-4 measured to learn in 500 steps.
    text_locator: bool = True
    text_locator_weight: float = 1.0
    text_locator_lr_scale: float = 30.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    base_dir: str = "."  # where relative paths start (the YAML file's folder)

    def __post_init__(self):
        if isinstance(self.interactive, dict):
            self.interactive = _build(InteractiveConfig, self.interactive, "interactive")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.data, dict):  # one data set written without the list around it
            self.data = [self.data]
        if not all(isinstance(spec, dict) for spec in self.data):
            raise ValueError(f"data must be a list of data sets like {{type: coco, annotations: x.json}}, got {self.data!r}")
        for name in ("steps", "grad_accum", "max_masks", "checkpoint_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]
        if self.text_prompt and not self.clip:
            raise ValueError("text_prompt: true needs clip: the CLIP model whose embeddings the projection maps")
        if any(t.startswith("image_encoder") for t in self.trainable) and self.freeze_image_encoder:
            raise ValueError("trainable names the image encoder but freeze_image_encoder is true; set it false")

    def path(self, value: Optional[str]) -> Optional[Path]:
        return None if value is None else (Path(self.base_dir) / value)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "config") -> "TrainConfig":
        return _build(cls, data, where)

    @classmethod
    def from_yaml(cls, path, overrides: Optional[Dict[str, Any]] = None) -> "TrainConfig":
        return _build(cls, read_yaml_config(path, overrides, "training config"), str(path))


def read_yaml_config(path, overrides: Optional[Dict[str, Any]], what: str,
                     scalar_keys: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """A YAML config as a dict, `--set` overrides applied (a dotted key reaches into mappings; a
    scalar that an override reaches below becomes {scalar_keys[key]: scalar}, else a new mapping),
    and base_dir set to the file's folder. Shared by `grounded train` and `grounded pretrain`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} is a mapping of keys to values")
    for key, value in (overrides or {}).items():
        target = data
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(target.get(p, {}), dict):
                target[p] = {scalar_keys[p]: target[p]} if p in (scalar_keys or {}) else {}
            target = target.setdefault(p, {})
        target[last] = value
    data.setdefault("base_dir", str(path.parent))
    return data


def _build(cls, data: Dict[str, Any], where: str):
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    return cls(**data)

"""The pre-training configuration: a dataclass read from YAML, every key checked.

    model: vit_base                    # a preset (vit_base/large/huge as the official MAE; vit_small, vit_tiny)
    # model: {preset: vit_tiny, depth: 6, image_size: 128}   # or a preset with some dimensions changed
    data: [images/, "more/**/*.png", list.txt]
    val_data: [held_out/]              # optional: held-out loss against the per-patch-mean baseline
    out_dir: runs/mae
    steps: 2000
    batch_size: 64
    precision: bf16

Relative paths are resolved from the YAML file's folder.
"""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..checkpoint_state import plain
from .masking import check_mask_ratio
from .model import PRESETS, MAEConfig

PRECISIONS = ("fp32", "bf16")
# What a resumed run must share with the checkpoint: everything that decides the weights it reaches.
RUN_DEFINING = ("model", "init", "data", "mask_ratio", "norm_pix_loss", "batch_size", "grad_accum", "steps",
                "base_lr", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "precision", "crop_scale",
                "crop_ratio", "hflip", "seed")


@dataclass
class PretrainConfig:
    model: Union[str, Dict[str, Any]] = "vit_base"
    init: Optional[str] = None  # start from these weights (MAE / ViT checkpoint, HF folder or hub id)
    data: List[str] = field(default_factory=list)  # folders, globs, lists, manifests
    val_data: List[str] = field(default_factory=list)
    out_dir: str = "runs/mae"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # loss on per-patch normalised pixels (MAE's better setting)
    batch_size: int = 64  # images per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    steps: int = 1000  # optimizer steps
    base_lr: float = 1.5e-4  # lr = base_lr * images per step / 256 (MAE's rule) unless lr is given
    lr: Optional[float] = None
    min_lr: float = 0.0  # the cosine schedule's floor
    warmup_steps: Optional[int] = None  # linear warm-up; default 5% of steps (MAE: 40 of 800 epochs)
    weight_decay: float = 0.05  # not on biases and norms
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    precision: str = "fp32"  # autocast: fp32 (off) or bf16
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: bool = True
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    figure_every: int = 100  # reconstruction figure every N steps (0: never), and at the end
    figure_images: int = 4
    eval_every: int = 0  # held-out loss every N steps (0: at the end only); needs val_data
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    base_dir: str = "."  # where relative paths start (the YAML file's folder)

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.val_data, str):
            self.val_data = [self.val_data]
        check_mask_ratio(self.mask_ratio)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "steps", "checkpoint_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must lie in [0, steps={self.steps}], got {self.warmup_steps}")
        self.mae_config()  # a bad model spec fails here, not after the data is scanned

    def mae_config(self) -> MAEConfig:
        """The model's dimensions: a preset, or a mapping of MAEConfig fields (with `preset:` to start from)."""
        spec = {"preset": self.model} if isinstance(self.model, str) else dict(self.model)
        preset = spec.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown model preset {preset!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[preset].to_dict() if preset else MAEConfig().to_dict()
        return MAEConfig.from_dict({**base, **spec})

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.base_lr * self.batch_size * self.grad_accum / 256

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else self.steps // 20

    def path(self, value: Optional[str]) -> Optional[Path]:
        return None if value is None else Path(self.base_dir) / value

    def resolved(self, inputs: List[str]) -> List[str]:
        """Inputs relative to base_dir (globs too)."""
        return [str(i) if Path(str(i)).is_absolute() else str(Path(self.base_dir) / str(i)) for i in inputs]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def differences(self, saved: Dict[str, Any]) -> List[str]:
        """The run-defining keys whose value differs from a checkpoint's config."""
        mine = self.to_dict()
        return [k for k in RUN_DEFINING if plain(mine.get(k)) != plain(saved.get(k))]

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "config") -> "PretrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path, overrides: Optional[Dict[str, Any]] = None) -> "PretrainConfig":
        """The YAML file with `--set` overrides; `model: vit_tiny` with `--set model.depth=6` becomes
        {preset: vit_tiny, depth: 6}."""
        from ..sam.training.config import read_yaml_config

        data = read_yaml_config(path, overrides, "pre-training config", scalar_keys={"model": "preset"})
        return cls.from_dict(data, str(path))

"""Training SAM (and SAM 2 / 2.1, with its object-score loss): the paper's losses, its 11-round
interactive prompting loop, a trainer with a frozen, cached image encoder and exact resume, datasets
(COCO, label images, SA-1B), and text-prompt training of `grounded.sam.text_prompt.TextPromptProjection`.
Imported only by what trains."""

from .config import TrainConfig
from .interactive import InteractiveConfig, run_interactive
from .losses import dice_loss, sam_loss, sigmoid_focal_loss
from .trainer import Trainer

__all__ = ["InteractiveConfig", "TrainConfig", "Trainer", "dice_loss", "run_interactive", "sam_loss",
           "sigmoid_focal_loss"]

"""Grounding DINO through groundingdino-py (the official code): a checkpoint such as
`groundingdino_swint_ogc.pth` with its `.py` config (`GroundingDINO_SwinT_OGC.py`).

- The config is read without running it: groundingdino-py's `SLConfig.fromfile` imports the `.py`
  file as a module (any code in it runs); here its top-level `name = literal` assignments are
  parsed with `ast.literal_eval`, and anything else in the file is refused. `.json` configs are
  read as JSON.
- The model's BERT comes from a local folder (`text_encoder=`, a bert-base-uncased saved with
  `save_pretrained`) or a hub id in the Hugging Face cache (the config's own `text_encoder_type`,
  e.g. "bert-base-uncased"), written into the config as that folder: the library calls
  `from_pretrained` on it, which would otherwise go to the hub.
- Under transformers 5 the BERT mask helpers the library uses are restored first
  (`grounded.detect.bert_compat`), and the model runs in float32 whatever the BERT folder's dtype.
- The checkpoint is read with `torch.load(weights_only=True)` and loaded strictly (the library's
  own `load_model` uses `strict=False`, which silently runs a half-random model when the config
  does not match); a mismatch is a ValueError naming keys and shapes. Only the two extras released
  checkpoints carry (`label_enc.weight`, from training, and `bert.embeddings.position_ids`) are skipped.

Preprocessing is groundingdino-py's own (`groundingdino.util.inference`): PIL bilinear resize of
the shortest side to `size` (longest <= `max_size`), ToTensor, ImageNet normalize; a batch is padded
by `nested_tensor_from_tensor_list`. Images with different prompts go through the network in
separate batches (see `forward`: groundingdino-py mixes up their text masks). groundingdino-py's multi-scale deformable attention falls back
to its pure-PyTorch path (`multi_scale_deformable_attn_pytorch`), which runs on the CPU."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .base import Detector
from .checkpoint import load_official_state_dict, read_config

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build_official_model(cfg: Dict[str, Any]):
    """groundingdino-py's model from config settings (its own builder; nothing downloads when
    `text_encoder_type` is a local folder). Under transformers 5 the BERT mask helpers it uses are
    restored first (`grounded.detect.bert_compat`)."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    from .bert_compat import restore_bert_mask_helpers

    restore_bert_mask_helpers()
    with contextlib.redirect_stdout(io.StringIO()):  # the builder prints the text encoder path
        return build_model(SLConfig(dict(cfg)))


def text_encoder_folder(name: Union[str, Path]) -> Path:
    """The BERT folder groundingdino-py builds its text encoder from (it calls from_pretrained on
    it): a local folder, or a hub id such as the shipped configs' "bert-base-uncased" from the
    Hugging Face cache (downloaded only when the hub answers; `grounded.hub`)."""
    from ..hub import is_hub_id, model_snapshot

    path = Path(str(name)).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    tried = [f"local folder {str(path)!r}" + (" (no config.json)" if path.is_dir() else " (does not exist)")]
    if str(name) and not path.exists() and is_hub_id(str(name)):
        folder = model_snapshot(str(name), tried, files=("*.json", "*.txt"))
        if folder is not None:
            return folder
    raise FileNotFoundError(
        "the BERT text encoder must be a local folder or a hub id in the Hugging Face cache (groundingdino-py calls "
        "from_pretrained on it): give text_encoder=<folder with bert-base-uncased's config.json, weights and "
        "tokenizer>. Tried:\n  - " + "\n  - ".join(tried))


class OfficialGroundingDino(Detector):
    backend = "groundingdino"
    preprocessing = ("groundingdino-py: PIL bilinear resize (shortest side `size`, longest <= `max_size`), ToTensor, "
                     "ImageNet normalize, batch padded by nested_tensor_from_tensor_list")

    def __init__(self, model, device: str = "cpu", size: int = 800, max_size: int = 1333):
        super().__init__(size, max_size)
        self.model, self.device = model, device
        self.tokenizer = model.tokenizer

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, Path], config: Union[str, Path],
                        text_encoder: Optional[Union[str, Path]] = None, device: str = "cpu", dtype: Any = None,
                        **kwargs) -> "OfficialGroundingDino":
        from .convert import NOT_IN_MODEL, check_state_dict

        if dtype is not None:
            raise ValueError("the groundingdino-py backend runs in float32; use the transformers backend "
                             "(`grounded convert grounding-dino`) for bf16/fp16")
        cfg = read_config(config)
        cfg["text_encoder_type"] = str(text_encoder_folder(text_encoder or cfg.get("text_encoder_type", "")))
        state = {k: v for k, v in load_official_state_dict(checkpoint).items() if not k.startswith(NOT_IN_MODEL)}
        # float32 throughout: transformers 5 builds the BERT in its folder's saved dtype (a bf16 save stays bf16).
        model = build_official_model(cfg).float()
        own = {k: v for k, v in model.state_dict().items() if not k.startswith(NOT_IN_MODEL)}
        check_state_dict(own, state, what=f"checkpoint {Path(checkpoint).name}")
        model.load_state_dict(state, strict=False)  # checked above; position_ids is a buffer in some transformers
        return cls(model.to(device).eval(), device, **kwargs)

    def prepare(self, images: Sequence[np.ndarray], size: Optional[int] = None, max_size: Optional[int] = None):
        import groundingdino.datasets.transforms as T
        from groundingdino.util.misc import nested_tensor_from_tensor_list
        from PIL import Image

        transform = T.Compose([T.RandomResize([size or self.size], max_size=max_size or self.max_size), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        tensors = [transform(Image.fromarray(image), None)[0] for image in images]
        batch = nested_tensor_from_tensor_list(tensors)
        return batch.tensors, ~batch.mask

    def forward(self, pixel_values, pixel_mask, captions: List[str]):
        import torch
        from groundingdino.util.misc import NestedTensor

        # One forward per distinct caption: groundingdino-py 0.4.0's text enhancer repeats the
        # per-caption attention masks batch-major (`src_mask.repeat(nhead, 1, 1)`) where
        # nn.MultiheadAttention wants them head-minor, so in a batch of different captions each
        # head reads another caption's mask. Images sharing a caption batch correctly.
        groups = {}
        for i, caption in enumerate(captions):
            groups.setdefault(caption, []).append(i)
        logits, boxes = [None] * len(captions), [None] * len(captions)
        for caption, rows in groups.items():
            samples = NestedTensor(pixel_values[rows].to(self.device), (~pixel_mask[rows].to(torch.bool)).to(self.device))
            with torch.no_grad():
                out = self.model(samples, captions=[caption] * len(rows))
            for j, i in enumerate(rows):
                logits[i], boxes[i] = out["pred_logits"][j].float().cpu(), out["pred_boxes"][j].float().cpu()
        return torch.stack(logits), torch.stack(boxes)

"""Grounding DINO through groundingdino-py (the official code): a checkpoint such as
`groundingdino_swint_ogc.pth` with its `.py` config (`GroundingDINO_SwinT_OGC.py`).

- The config is read without running it: groundingdino-py's `SLConfig.fromfile` imports the `.py`
  file as a module (any code in it runs); here its top-level `name = literal` assignments are
  parsed with `ast.literal_eval`, and anything else in the file is refused. `.json` configs are
  read as JSON.
- The model's BERT comes from a local folder (`text_encoder=`, a bert-base-uncased saved with
  `save_pretrained`), written into the config as `text_encoder_type`: the library calls
  `from_pretrained` on it, which would otherwise go to the hub.
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

import ast
import contextlib
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .base import Detector

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """An official config file's settings, without executing it (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Grounding DINO config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix != ".py":
        raise ValueError(f"Grounding DINO config {path} must be a .py (like GroundingDINO_SwinT_OGC.py) or .json file")
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise ValueError(f"config {path} is not valid Python: {err}") from None
    cfg: Dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"config {path} line {node.lineno}: only `name = value` assignments are read "
                             "(the file is parsed, not run)")
        try:
            cfg[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"config {path} line {node.lineno}: the value of {node.targets[0].id!r} is not a literal "
                             "(numbers, strings, lists, dicts, True/False/None)") from None
    if "_base_" in cfg:
        raise ValueError(f"config {path} inherits from {cfg['_base_']!r}; give the complete config file")
    return cfg


def load_official_state_dict(checkpoint: Union[str, Path]) -> Dict[str, Any]:
    """The state dict of an official checkpoint ({"model": ...} or a bare state dict), `module.`
    prefixes removed; read with weights_only=True (a pickle carrying code is refused)."""
    import pickle

    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"Grounding DINO checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path} is not a plain weights file (refused to unpickle code): {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def build_official_model(cfg: Dict[str, Any]):
    """groundingdino-py's model from config settings (its own builder; nothing downloads when
    `text_encoder_type` is a local folder)."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    with contextlib.redirect_stdout(io.StringIO()):  # the builder prints the text encoder path
        return build_model(SLConfig(dict(cfg)))


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
        if text_encoder is not None:
            cfg["text_encoder_type"] = str(Path(text_encoder).expanduser().resolve())
        encoder = Path(str(cfg.get("text_encoder_type", "")))
        if not (encoder / "config.json").is_file():
            raise FileNotFoundError(
                f"the BERT text encoder must be a local folder (groundingdino-py calls from_pretrained on it); "
                f"tried {str(encoder)!r}: give text_encoder=<folder with bert-base-uncased's config.json, weights and "
                "vocab.txt>")
        state = {k: v for k, v in load_official_state_dict(checkpoint).items() if not k.startswith(NOT_IN_MODEL)}
        model = build_official_model(cfg)
        own = {k: v for k, v in model.state_dict().items() if not k.startswith(NOT_IN_MODEL)}
        check_state_dict(_Keys(own), state, what=f"checkpoint {Path(checkpoint).name}")
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


class _Keys:
    """A state dict standing in for a model in `check_state_dict`."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state

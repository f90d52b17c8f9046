"""BLIP captioning (transformers `BlipForConditionalGeneration` + `BlipProcessor`): every image
captioned, batched, with beam search and length settings, optionally continuing a prefix ("a
picture of").

The model is a Hugging Face folder or hub id (default `Salesforce/blip-image-captioning-base`, read
from the local Hugging Face cache when HF_HUB_OFFLINE=1). Preprocessing is BLIP's own
`BlipImageProcessor` (resize to the model's square input, CLIP mean/std); the captions are what the
model's `generate` gives, decoded without special tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"

# What a BLIP captioner folder needs, and the file names that satisfy each need.
REQUIRED_FILES = {
    "config": ("config.json",),
    "weights": ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    "image processor": ("preprocessor_config.json", "processor_config.json"),  # (the second: transformers 5's save)
    "tokenizer": ("tokenizer.json", "vocab.txt"),
}


class BlipCaptioner:
    """A BLIP model and its processor on one device: `caption(images)` -> one string per image."""

    def __init__(self, model, processor, device: str = "cpu", dtype=None):
        self.model, self.processor = model, processor
        self.device, self.dtype = device, dtype

    def inputs(self, images: Sequence[np.ndarray], prompt: Optional[str] = None) -> Dict[str, Any]:
        """The model's inputs for a batch of HxWx3 uint8 images (and a prefix shared by all of them)."""
        for i, image in enumerate(images):
            if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3):
                shape = getattr(image, "shape", type(image).__name__)
                raise ValueError(f"image {i} must be an HxWx3 RGB array, got {shape}")
        # One prompt for the whole batch: every row has the same tokens, so nothing is padded.
        text = [prompt] * len(images) if prompt else None
        encoded = self.processor(images=list(images), text=text, return_tensors="pt", input_data_format="channels_last")
        pixels = encoded["pixel_values"]
        inputs = {"pixel_values": pixels.to(self.device, self.dtype or pixels.dtype)}
        if prompt:
            inputs["input_ids"] = encoded["input_ids"].to(self.device)
            inputs["attention_mask"] = encoded["attention_mask"].to(self.device)
        return inputs

    def generate(self, images: Sequence[np.ndarray], prompt: Optional[str] = None, **generate_kwargs):
        """Token ids from the model's own `generate` (generate_kwargs go to it unchanged)."""
        import torch

        with torch.inference_mode():
            return self.model.generate(**self.inputs(images, prompt), **generate_kwargs)

    def decode(self, ids) -> List[str]:
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def caption(self, images: Sequence[np.ndarray], prompt: Optional[str] = None, batch_size: int = 8,
                **generate_kwargs) -> List[str]:
        """Captions of `images`, `batch_size` images per `generate` call."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out: List[str] = []
        for start in range(0, len(images), batch_size):
            out += self.decode(self.generate(images[start:start + batch_size], prompt, **generate_kwargs))
        return out


def load_blip(name_or_path: Union[str, Path] = DEFAULT_MODEL, device: str = "cpu", dtype=None,
              cache_dir: Optional[Union[str, Path]] = None, revision: Optional[str] = None) -> BlipCaptioner:
    """A `BlipCaptioner` from a local folder or a hub id. Raises FileNotFoundError naming every place
    tried and what each lacked, ValueError for a folder that is not a BLIP captioner or whose
    weights do not fit its config."""
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    folder = resolve_blip_folder(name_or_path, cache_dir=cache_dir, revision=revision)
    _check_config(folder)
    try:  # dtype given: transformers 5 would keep the checkpoint's saved dtype
        model, info = BlipForConditionalGeneration.from_pretrained(folder, output_loading_info=True,
                                                                   dtype=dtype or torch.float32)
    except Exception as err:  # truncated files, shapes that do not fit the config, ...
        raise ValueError(f"cannot load the BLIP weights in {folder}: {err.__class__.__name__}: "
                         f"{str(err).strip()[:500]}") from err
    # transformers only warns about these and initialises the missing weights at random.
    missing, unexpected, mismatched = (sorted(map(str, info[k]))[:10]  # (sets in transformers 5)
                                       for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    if missing or unexpected or mismatched:
        raise ValueError(f"the weights in {folder} do not fit its config.json: missing {missing}, "
                         f"unexpected {unexpected}, mismatched {mismatched}")
    from ..transformers_compat import pil_processor_kwargs

    processor = BlipProcessor.from_pretrained(folder, **pil_processor_kwargs())  # PIL resize, as in transformers 4
    model = model.to(device=device, dtype=dtype).eval()
    return BlipCaptioner(model, processor, device=device, dtype=dtype)


def resolve_blip_folder(name: Union[str, Path], cache_dir=None, revision=None) -> Path:
    """The folder holding a BLIP captioner: `name` itself, or its snapshot in the Hugging Face cache."""
    tried: List[str] = []
    path = Path(str(name)).expanduser()
    if path.is_dir():
        lacks = folder_lacks(path)
        if not lacks:
            return path
        tried.append(f"folder {path}: no {'; no '.join(lacks)}")
    elif path.exists():
        tried.append(f"{path} is a file; a BLIP captioner is a folder ({', '.join(n[0] for n in REQUIRED_FILES.values())}, ...)")
    else:
        tried.append(f"local folder {path} (does not exist)")
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(name)):
        folder = _hub_snapshot(str(name), cache_dir, revision, tried)
        if folder is not None:
            return folder
    elif not path.exists():
        tried.append(f"{str(name)!r} is not a hub id of the form org/name")
    raise FileNotFoundError(f"could not find a BLIP captioner for {str(name)!r}. Tried:\n  - " + "\n  - ".join(tried))


def folder_lacks(folder: Path) -> List[str]:
    """What a BLIP folder is missing, in words (empty when complete)."""
    return [f"{need} ({' or '.join(names)})" for need, names in REQUIRED_FILES.items()
            if not any((folder / n).is_file() for n in names)]


def _hub_snapshot(repo_id: str, cache_dir, revision, tried: List[str]) -> Optional[Path]:
    from ..hub import model_snapshot

    # the cache first; safetensors before .bin weights (grounded.hub)
    folder = model_snapshot(repo_id, tried, cache_dir, revision, files=("*.json", "*.txt"))
    if folder is not None and folder_lacks(folder):
        tried.append(f"Hugging Face hub id {repo_id!r}: snapshot {folder}: no {'; no '.join(folder_lacks(folder))}")
        return None
    return folder


def _check_config(folder: Path) -> None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder / 'config.json'} is not readable JSON ({err})") from None
    kind = config.get("model_type")
    if kind != "blip":
        raise ValueError(f"{folder / 'config.json'}: model_type is {kind!r}, not 'blip'; the caption node reads BLIP "
                         f"captioners (BlipForConditionalGeneration) such as {DEFAULT_MODEL}")
    archs = config.get("architectures") or ["BlipForConditionalGeneration"]
    if "BlipForConditionalGeneration" not in archs:
        raise ValueError(f"{folder}: a {archs} checkpoint, not a BLIP captioner (BlipForConditionalGeneration)")

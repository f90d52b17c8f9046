"""Golden outputs of the text models, to prove that a library upgrade (transformers 4.57 -> 5.x)
changes no output: four tiny seeded models, each saved in its checkpoint layout and loaded back
through grounded's own loaders, run on fixed inputs.

- `official_grounding_dino`: groundingdino-py's model (official checkpoint + `.py` config, the
  `grounded.detect.official` backend): raw logits over the caption's tokens and boxes per query,
  then the detections.
- `hf_grounding_dino`: transformers' `GroundingDinoForObjectDetection` folder through
  `grounded.detect.hf` (its image processor included): the same outputs.
- `blip`: a BLIP captioner folder through `grounded.caption.load_blip`: next-token logits of
  one forward pass, and the token ids greedy and beam search generate.
- `clip`: a transformers `CLIPModel` folder through `grounded.clip.load_clip`: text and image
  embeddings and the logit scale.

Weights do not depend on how a library builds or initialises its modules: after the model is saved,
every tensor of the checkpoint file is redrawn from a generator seeded by its name in the file (norm
scales near one), so the same checkpoint names give the same weights under any version. Each golden
holds the checkpoint's weight names, shapes and dtypes (`keys`, as this version saves them); given
the golden's keys (`keep`), a model function writes exactly those into the checkpoint, so a later
version loads the file an earlier one wrote, as it will meet it on the hub. The goldens live in
tests/goldens/ (written by tests/goldens/make_goldens.py, compared by tests/test_goldens.py)."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import torch

Outputs = Dict[str, np.ndarray]

PROMPTS = ["dog. cat. red car.", "a person. a bicycle."]
CLIP_TEXTS = ["a red circle", "a blue square", "the yellow triangle"]
DETECT_SIZE = dict(size=64, max_size=100)


def images(seed: int = 0, shapes=((60, 80), (72, 50))):
    """Fixed random HxWx3 uint8 images (numpy's PCG64: the same on every version)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


# ---- weights by name -----------------------------------------------------------------------------

def _is_norm_scale(name: str, tensor: torch.Tensor) -> bool:
    lower = name.lower()
    return tensor.ndim == 1 and lower.endswith(".weight") and ("norm" in lower or ".ln_" in lower)


def seeded_value(name: str, tensor: torch.Tensor, seed: int, std: float) -> torch.Tensor:
    """The value of checkpoint tensor `name`: normal(0, std), norm scales 1 + normal(0, std), from a
    generator seeded by (seed, crc32 of the name). Integer tensors (indices, ids) are kept."""
    if not tensor.is_floating_point():
        return tensor
    gen = torch.Generator().manual_seed((seed << 32) ^ zlib.crc32(name.encode()))
    value = torch.randn(tensor.shape, generator=gen, dtype=torch.float32) * std
    if _is_norm_scale(name, tensor):
        value += 1
    return value.to(tensor.dtype)


def seed_state_dict(state: Mapping[str, torch.Tensor], seed: int, std: float,
                    scale: Optional[Mapping[str, float]] = None) -> Dict[str, torch.Tensor]:
    """Every tensor of `state` redrawn by name (`seeded_value`); tensors that share storage (tied
    weights) get the value of the first of their names in sorted order. `scale` multiplies named tensors."""
    out: Dict[str, torch.Tensor] = {}
    by_storage: Dict[tuple, torch.Tensor] = {}
    for name in sorted(state):
        tensor = state[name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.is_floating_point() and key in by_storage:
            out[name] = by_storage[key]
            continue
        value = seeded_value(name, tensor, seed, std)
        if scale and name in scale:
            value = value * scale[name]
        out[name] = by_storage[key] = value
    return out


def keys(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """The sorted "name shape dtype" lines of a checkpoint's weights. Integer buffers (index tables
    a model rebuilds, such as Swin's relative_position_index, which transformers 5 no longer saves)
    are left out: their values are not drawn here."""
    return np.array([f"{k} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}" for k, v in sorted(state.items())
                     if v.is_floating_point()])


def restrict(state: Dict[str, torch.Tensor], keep: Optional[np.ndarray]) -> Dict[str, torch.Tensor]:
    """`state`'s weights named in `keep` (lines of `keys`), each of which it must hold, and its
    integer buffers."""
    if keep is None:
        return state
    names = {line.split(" ", 1)[0] for line in keep}
    missing = sorted(names - set(state))
    if missing:
        raise KeyError(f"this version's checkpoint lacks {len(missing)} weights of the golden: {missing[:5]}")
    return {k: v for k, v in state.items() if k in names or not v.is_floating_point()}


def seed_safetensors(path: Path, seed: int, std: float, scale: Optional[Mapping[str, float]] = None,
                     keep: Optional[np.ndarray] = None) -> np.ndarray:
    """Redraw every tensor of a saved `model.safetensors` by name (see `seed_state_dict`), keeping
    only the weights in `keep` when given; returns the `keys` of the file as saved."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    seeded = seed_state_dict(restrict(state, keep), seed, std, scale)
    save_file({k: v.contiguous() for k, v in seeded.items()}, str(path), metadata={"format": "pt"})
    return keys(state)


# ---- Grounding DINO (both backends) --------------------------------------------------------------

def _detections(detector, imgs) -> Outputs:
    """Raw outputs over each caption's tokens (the rest of the 256 positions must be -inf) and the
    detections at box threshold 0.9, of a detector on `images` with PROMPTS."""
    from ..detect import parse_prompt

    prompts = [parse_prompt(p) for p in PROMPTS]
    captions = [p.caption for p in prompts]
    pixels, mask = detector.prepare(imgs)
    with torch.inference_mode():
        logits, boxes = detector.forward(pixels, mask, captions)
    n_tokens = max(len(ids) for ids in detector.tokenize(captions)["input_ids"])
    out: Outputs = {"logits": logits[:, :, :n_tokens].numpy(), "boxes": boxes.numpy(),
                    "logits_tail_is_inf": np.array(bool(torch.isneginf(logits[:, :, n_tokens:]).all())),
                    "input_ids": np.array(detector.tokenize(captions)["input_ids"])}
    for i, (image, dets) in enumerate(zip(imgs, detector.detect(imgs, PROMPTS, box_threshold=0.9))):
        height, width = image.shape[:2]  # boxes as fractions of the image, so that 1e-5 means the same everywhere
        out[f"xyxy_{i}"] = (dets.xyxy / np.array([width, height, width, height])).astype(np.float32)
        out[f"scores_{i}"] = np.asarray(dets.scores, np.float32)
        out[f"class_id_{i}"] = np.asarray(dets.class_id, np.int64)
    return out


def official_grounding_dino(workdir: Path, keep: Optional[np.ndarray] = None) -> Outputs:
    """groundingdino-py's tiny model, seeded by name, through `load_detector(checkpoint, config)`."""
    from ..detect import load_detector
    from .dino import build_official, tiny_official_config, tiny_text_encoder, write_official_config

    bert = workdir / "bert"
    tiny_text_encoder(bert, seed=0)
    cfg = tiny_official_config(bert.resolve())
    built = build_official(cfg).state_dict()
    state = seed_state_dict(restrict(built, keep), seed=11, std=0.02, scale={"transformer.decoder.norm.weight": 0.15})
    checkpoint = workdir / "groundingdino_tiny.pth"
    torch.save({"model": state}, checkpoint)
    config = write_official_config(workdir / "GroundingDINO_tiny.py", cfg)
    out = _detections(load_detector(checkpoint, config, text_encoder=bert, **DETECT_SIZE), images())
    out["keys"] = keys(built)
    out["vocab_sha256"] = np.frombuffer(hashlib.sha256((bert / "vocab.txt").read_bytes()).digest(), np.uint8).copy()
    return out


def hf_grounding_dino(workdir: Path, keep: Optional[np.ndarray] = None) -> Outputs:
    """transformers' tiny Grounding DINO folder, seeded by name, through `load_detector(folder)`."""
    from transformers import GroundingDinoForObjectDetection

    from ..detect import load_detector
    from .dino import save_hf_processor, tiny_hf_config, tiny_text_encoder

    bert, folder = workdir / "bert", workdir / "hf"
    tiny_text_encoder(bert, seed=0)
    GroundingDinoForObjectDetection(tiny_hf_config(bert)).save_pretrained(folder)
    saved = seed_safetensors(folder / "model.safetensors", seed=12, std=0.02,
                             scale={"model.decoder.layer_norm.weight": 0.15}, keep=keep)
    save_hf_processor(folder, bert)
    out = _detections(load_detector(folder, **DETECT_SIZE), images())
    out["keys"] = saved
    return out


# ---- BLIP and CLIP -------------------------------------------------------------------------------

def blip(workdir: Path, keep: Optional[np.ndarray] = None) -> Outputs:
    """A tiny BLIP captioner folder, seeded by name, through `load_blip`: next-token logits for a
    prefix, and greedy and beam-search token ids."""
    from ..caption import load_blip
    from .blip import tiny_blip

    folder = workdir / "blip"
    tiny_blip(folder)
    saved = seed_safetensors(folder / "model.safetensors", seed=13, std=0.3, keep=keep)
    captioner = load_blip(folder)
    imgs = images(1, shapes=((40, 56), (61, 23)))
    inputs = captioner.inputs(imgs, prompt="a picture of")
    with torch.inference_mode():
        logits = captioner.model(**inputs).logits
    out: Outputs = {"logits": logits.numpy(), "keys": saved}
    for name, kwargs in (("greedy", dict(num_beams=1)), ("beam", dict(num_beams=3))):
        ids = captioner.generate(imgs, max_new_tokens=8, min_new_tokens=2, **kwargs)
        out[f"{name}_ids"] = ids.numpy()
    return out


def clip(workdir: Path, keep: Optional[np.ndarray] = None) -> Outputs:
    """A tiny transformers CLIPModel folder, seeded by name, through `load_clip`."""
    from ..clip import load_clip
    from .clip import tiny_hf_clip

    folder = tiny_hf_clip(workdir / "clip")
    saved = seed_safetensors(folder / "model.safetensors", seed=14, std=0.1, keep=keep)
    model = load_clip(str(folder))
    return {"text": model.encode_text(CLIP_TEXTS).numpy(),
            "images": model.encode_images(images(2, shapes=((40, 56), (32, 32)))).numpy(),
            "logit_scale": np.array(model.logit_scale, np.float32),
            "keys": saved}


MODELS: Dict[str, Callable[..., Outputs]] = {
    "official_grounding_dino": official_grounding_dino,
    "hf_grounding_dino": hf_grounding_dino,
    "blip": blip,
    "clip": clip,
}


def versions() -> Dict[str, str]:
    """The library versions the goldens were made with."""
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "transformers", "tokenizers", "huggingface_hub",
                                               "groundingdino-py", "numpy")}


def compare(golden: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> Dict[str, float]:
    """Max absolute difference per array (inf where shapes or keys differ; integers and strings
    compare exactly: 0 or inf). -inf entries must be -inf in both."""
    diffs: Dict[str, float] = {}
    for key in sorted(set(golden) | set(now)):
        a, b = golden.get(key), now.get(key)
        if a is None or b is None or np.shape(a) != np.shape(b):
            diffs[key] = float("inf")
        elif not np.issubdtype(np.asarray(a).dtype, np.floating):
            diffs[key] = 0.0 if np.array_equal(a, b) else float("inf")
        else:
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            finite = np.isfinite(a)
            if not np.array_equal(finite, np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite]):
                diffs[key] = float("inf")
            else:
                diffs[key] = float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0
    return diffs


def write_versions(path: Path) -> None:
    path.write_text(json.dumps(versions(), indent=2) + "\n")

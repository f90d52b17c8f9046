"""One CLIP interface over two backends: open_clip and transformers' `CLIPModel`.

    clip = load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")      # open_clip: name + tag (its cache)
    clip = load_clip("ViT-B-32", pretrained="path/to/open_clip.bin")  # open_clip: name + checkpoint file
    clip = load_clip("path/to/open_clip_folder")                     # open_clip: open_clip_config.json + weights
    clip = load_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")  # open_clip layout on the hub (HF cache)
    clip = load_clip("openai/clip-vit-base-patch32")                 # transformers CLIPModel: hub id or folder
    clip.encode_text(["a dog"])               # [N, D] unit vectors
    clip.encode_images([image])               # [N, D] unit vectors (HxWx3 uint8 RGB)
    clip.score_masks(image, masks, ["a dog"])  # [N masks, N texts] cosine similarity of masked crops

Hub ids, 'hf-hub:' names and pretrained tags are read from the local caches first and downloaded
only when the hub answers (`grounded.hub`; nothing is downloaded with HF_HUB_OFFLINE=1). Each backend
preprocesses images its own way (open_clip's validation transform, transformers'
`CLIPImageProcessor` with its PIL backend); masked crops are padded square first
(see `grounded.clip.crops`), so that preprocessing keeps the whole object.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
import torch

from .crops import CLIP_MEAN_RGB, masked_crops

BACKENDS = ("auto", "open_clip", "transformers")


def check_text(text: Any, what: str = "text") -> str:
    """The text, stripped, or a ValueError saying why it cannot be a prompt."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{what} is empty: describe the object, e.g. 'a dog'")
    if not re.search(r"\w", stripped):
        raise ValueError(f"{what} {text!r} has no words (only punctuation): describe the object, e.g. 'a dog'")
    return stripped


class ClipModel:
    """A loaded CLIP: text and image embeddings (unit length, float32, on the CPU) and scores."""

    def __init__(self, model: torch.nn.Module, tokenize: Callable[[List[str]], dict],
                 preprocess: Callable[[List[np.ndarray]], torch.Tensor], backend: str, name: str,
                 device: str = "cpu", dtype: Optional[torch.dtype] = None) -> None:
        self.model, self._tokenize, self._preprocess = model.eval(), tokenize, preprocess
        self.backend, self.name = backend, name
        self.device, self.dtype = torch.device(device), dtype or torch.float32

    @property
    def logit_scale(self) -> float:
        """exp of the learned temperature: similarity x this = the logits CLIP was trained with."""
        return float(self.model.logit_scale.detach().exp())

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        from ..transformers_compat import pooled

        if isinstance(texts, str):
            texts = [texts]
        texts = [check_text(t) for t in texts]
        tokens = {k: v.to(self.device) for k, v in self._tokenize(texts).items()}
        if self.backend == "open_clip":
            features = self.model.encode_text(tokens["input_ids"])
        else:
            features = pooled(self.model.get_text_features(**tokens))
        return _unit(features)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[np.ndarray], batch_size: int = 64) -> torch.Tensor:
        """HxWx3 uint8 RGB images (any sizes) -> [N, D]."""
        from ..transformers_compat import pooled

        out = []
        for start in range(0, len(images), batch_size):
            pixels = self._preprocess(list(images[start:start + batch_size])).to(self.device, self.dtype)
            if self.backend == "open_clip":
                features = self.model.encode_image(pixels)
            else:
                features = pooled(self.model.get_image_features(pixel_values=pixels))
            out.append(_unit(features))
        if not out:
            return torch.zeros((0, self.embed_dim))
        return torch.cat(out)

    @property
    def embed_dim(self) -> int:
        if self.backend == "open_clip":
            return int(self.model.text_projection.shape[-1]) if self.model.text_projection is not None \
                else int(self.model.visual.output_dim)
        return int(self.model.config.projection_dim)

    def similarity(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity [N images, N texts]."""
        texts_emb = self.encode_text(texts)
        return (self.encode_images(images) @ texts_emb.T).numpy()

    def score_masks(self, image: np.ndarray, masks: np.ndarray, texts: Sequence[str],
                    background: Sequence[int] = CLIP_MEAN_RGB, margin: float = 0.1) -> np.ndarray:
        """Cosine similarity [N masks, N texts] of each mask's masked crop (see `grounded.clip.crops`)
        to each text. Zero masks give a 0 x N array."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be NxHxW, got shape {masks.shape}")
        if isinstance(texts, str):
            texts = [texts]
        text_emb = self.encode_text(texts)
        if len(masks) == 0:
            return np.zeros((0, len(texts)), np.float32)
        crops = masked_crops(image, masks, background=background, margin=margin)
        return (self.encode_images(crops) @ text_emb.T).numpy()

    def __repr__(self) -> str:
        return f"ClipModel({self.name!r}, backend={self.backend}, dim={self.embed_dim}, device={self.device})"


def _unit(features: torch.Tensor) -> torch.Tensor:
    features = features.float()
    return (features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu()


def clip_backend(model: str, pretrained: Optional[str] = None) -> str:
    """Which backend a model name means: open_clip for a pretrained tag/file, 'hf-hub:' / 'local-dir:'
    names and folders with open_clip_config.json; transformers for folders with config.json and
    other hub ids."""
    if pretrained:
        return "open_clip"
    if model.startswith(("hf-hub:", "local-dir:")):
        return "open_clip"
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "open_clip_config.json").is_file():
            return "open_clip"
        if (path / "config.json").is_file():
            return "transformers"
        raise FileNotFoundError(f"{path} holds neither open_clip_config.json (open_clip) nor config.json "
                                "(transformers CLIPModel)")
    if path.is_file():
        raise ValueError(f"{model} is a checkpoint file: give its open_clip model name too, e.g. "
                         f"model='ViT-B-32', pretrained='{model}'")
    return "transformers"


def load_clip(model: str, pretrained: Optional[str] = None, backend: str = "auto", device: str = "cpu",
              dtype: Optional[torch.dtype] = None) -> ClipModel:
    """A `ClipModel` from an open_clip name + tag/file, an open_clip folder or 'hf-hub:' id, or a
    transformers CLIPModel folder or hub id (see the module docstring). `dtype` None is float32."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown CLIP backend {backend!r}; use one of {list(BACKENDS)}")
    if backend == "auto":
        backend = clip_backend(model, pretrained)
    if backend == "open_clip":
        return _load_open_clip(model, pretrained, device, dtype)
    if pretrained:
        raise ValueError("`pretrained` is an open_clip tag or file; a transformers model is named by `model` alone")
    return _load_transformers(model, device, dtype)


def _precision(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _load_open_clip(model: str, pretrained: Optional[str], device: str, dtype) -> ClipModel:
    import open_clip

    name = model
    path = Path(model).expanduser()
    if model.startswith("hf-hub:"):
        name = f"local-dir:{_open_clip_hub_folder(model[len('hf-hub:'):])}"
    elif not model.startswith("local-dir:") and path.is_dir():
        name = f"local-dir:{path.resolve()}"
    tag_settings = {}
    if pretrained and Path(pretrained).expanduser().exists():
        pretrained = str(Path(pretrained).expanduser().resolve())
    elif pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained}")
    if not name.startswith("local-dir:") and open_clip.get_model_config(name) is None:
        raise ValueError(f"unknown open_clip model {model!r}: not a folder with open_clip_config.json, not "
                         f"'hf-hub:org/name', and not an open_clip architecture (open_clip.list_models())")
    if name.startswith("local-dir:"):
        pretrained = None  # a folder or hub repository carries its weights (open_clip ignores `pretrained` there)
    elif pretrained and not Path(pretrained).is_file():
        pretrained, tag_settings = _open_clip_tag(name, pretrained)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=_precision(dtype), **tag_settings)
    except RuntimeError as err:
        text = str(err)
        if "size mismatch" in text or "Missing key" in text or "Unexpected key" in text:
            raise ValueError(f"the checkpoint does not fit open_clip model {model!r} (its config): "
                             f"{text.splitlines()[0][:300]} ...") from None
        raise
    tokenizer = open_clip.get_tokenizer(name)

    def tokenize(texts: List[str]) -> dict:
        return {"input_ids": tokenizer(texts)}

    def prepare(images: List[np.ndarray]) -> torch.Tensor:
        from PIL import Image

        return torch.stack([preprocess(Image.fromarray(np.asarray(im, np.uint8))) for im in images])

    label = f"{model}@{pretrained}" if pretrained else model
    return ClipModel(net, tokenize, prepare, "open_clip", label, device, dtype)


def _open_clip_hub_folder(repo_id: str) -> Path:
    """The folder of open_clip hub repository `repo_id` (open_clip_config.json + weights)."""
    from ..hub import model_snapshot

    tried: List[str] = []
    folder = model_snapshot(repo_id, tried, files=("*.txt",), config_file="open_clip_config.json",
                            weight_formats=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    if folder is None:
        raise FileNotFoundError(f"open_clip model 'hf-hub:{repo_id}' not found. Tried:\n  - " + "\n  - ".join(tried))
    return folder


def _open_clip_tag(model: str, tag: str):
    """(weights file, preprocessing settings) of open_clip pretrained tag `tag` of `model`, the
    weights from the Hugging Face cache or open_clip's own (~/.cache/clip), downloaded only when
    their server answers (`grounded.hub`); the settings are those open_clip takes from the tag."""
    import open_clip
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from open_clip.pretrained import download_pretrained_from_url

    from ..hub import HUB_ANSWER_SECONDS, from_cache_or_hub

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        raise ValueError(f"unknown pretrained tag {tag!r} for open_clip model {model!r}: give a checkpoint file or one of "
                         f"{open_clip.list_pretrained_tags_by_model(model)}")
    settings = {"image_mean": cfg.get("mean"), "image_std": cfg.get("std"),
                "image_interpolation": cfg.get("interpolation"), "image_resize_mode": cfg.get("resize_mode")}
    tried: List[str] = []
    if cfg.get("hf_hub"):
        # open_clip's own choice: "org/name/file", or "org/name/" for its default file; safetensors first
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else filename[:-4] + ".safetensors"
        names = list(dict.fromkeys([safe if filename.endswith((".bin", ".pth")) else filename, filename]))

        def cached() -> Path:
            found = [try_to_load_from_cache(repo_id, name) for name in names]  # (no network call)
            for path in found:
                if isinstance(path, str):
                    return Path(path)
            raise FileNotFoundError(f"none of {names} cached")

        def download() -> Path:
            for i, name in enumerate(names):
                try:
                    return Path(hf_hub_download(repo_id, name, etag_timeout=HUB_ANSWER_SECONDS))
                except Exception:  # noqa: BLE001 - the next name, or the last error
                    if i == len(names) - 1:
                        raise

        weights = from_cache_or_hub(f"Hugging Face hub id {repo_id!r} ({' or '.join(names)})", cached, download,
                                    tried, repo_id)
    else:
        cache = Path("~/.cache/clip").expanduser()
        local = cache / Path(cfg["url"]).name

        def cached() -> Path:
            if not local.is_file():
                raise FileNotFoundError(f"no {local}")
            return local

        weights = from_cache_or_hub(f"open_clip weights {cfg['url']}", cached,
                                    lambda: Path(download_pretrained_from_url(cfg["url"], str(cache))), tried,
                                    cache_dir=cache, url=cfg["url"])
    if weights is None:
        raise FileNotFoundError(f"open_clip weights for {model!r} tag {tag!r} not found. Tried:\n  - " + "\n  - ".join(tried))
    return str(weights), {k: v for k, v in settings.items() if v is not None}


def _load_transformers(model: str, device: str, dtype) -> ClipModel:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    from ..hub import local_or_hub_folder
    from ..transformers_compat import load_checked, pil_processor_kwargs

    try:
        folder = local_or_hub_folder(model, "CLIP model")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}\nFor open_clip give model + pretrained, a folder with open_clip_config.json, "
                                "or 'hf-hub:org/name'.") from None
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json (a transformers CLIPModel folder)")
    try:
        # float32 unless asked (transformers 5 keeps a checkpoint's saved dtype), PIL preprocessing (as 4.x)
        net = load_checked(CLIPModel, folder, str(folder), dtype=dtype or torch.float32).to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder, **pil_processor_kwargs())
    except OSError as err:
        raise FileNotFoundError(f"CLIP model {model!r}: {folder} is incomplete ({str(err).splitlines()[0]})") from None
    max_length = net.config.text_config.max_position_embeddings

    def tokenize(texts: List[str]) -> dict:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    def prepare(images: List[np.ndarray]) -> torch.Tensor:
        return processor(images=[np.asarray(im, np.uint8) for im in images], return_tensors="pt")["pixel_values"]

    clip = ClipModel(net, tokenize, prepare, "transformers", model, device, dtype)
    clip.tokenizer = tokenizer
    return clip

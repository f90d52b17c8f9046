"""Tiny CLIPs for tests: an open_clip model trained on synthetic shapes, and a random transformers
`CLIPModel`, each saved and loaded back through the real loading code.

A random CLIP cannot rank anything, so the open_clip one is trained contrastively on
`grounded.testing.shapes` (masked crops and single-shape images against captions like "a red
circle"), about 20-40 s on one CPU thread, until its text and image halves agree:

    folder = tiny_trained_clip(cache_dir)        # trains once per cache_dir, then reuses the folder
    clip = grounded.clip.load_clip(str(folder))  # open_clip, through create_model_and_transforms
    clip.score_masks(scene.image, scene.masks, ["a red circle"])

The folder is open_clip's own layout (open_clip_config.json + open_clip_model.safetensors), so it
loads as a folder, as 'local-dir:PATH', as 'hf-hub:org/name' from a hub cache
(`grounded.testing.hf_cache`), or as model name + checkpoint file once the config is registered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from .shapes import COLORS, SHAPES, caption, draw_scene, shapes_dataset

TINY_OPEN_CLIP_NAME = "tiny-shapes-clip"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 4},
    # CLIP's real BPE vocabulary (open_clip's SimpleTokenizer); short context for short captions.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS_CONFIG = {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                          "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                          "resize_mode": "shortest"}
TEMPLATES = ("a {color} {shape}", "the {color} {shape}", "{color} {shape}", "a {shape} that is {color}")
WEIGHTS_FILE = "open_clip_model.safetensors"


def save_open_clip_folder(model: torch.nn.Module, out_dir: Union[str, Path]) -> Path:
    """Write `model` in open_clip's folder layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_OPEN_CLIP_CONFIG, "preprocess_cfg": TINY_PREPROCESS_CONFIG}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    return out_dir


def random_tiny_open_clip(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """A random tiny open_clip model saved as a folder (see `save_open_clip_folder`)."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return save_open_clip_folder(CLIP(**TINY_OPEN_CLIP_CONFIG), out_dir)


def training_crops(n: int, seed: int = 0, size: int = 64) -> tuple:
    """`n` training images with class indices (into `shapes.all_captions()` order): half masked
    crops of shapes in scenes of one to three (as text-to-mask shows CLIP), half whole single-shape
    images on a grey background."""
    from ..clip.crops import masked_crop

    rng = np.random.default_rng(seed)
    images: List[np.ndarray] = []
    labels: List[int] = []
    n_shapes = len(SHAPES)
    for i in range(n):
        scene = draw_scene(rng, size, 1 if i % 2 else int(rng.integers(1, 4)))
        k = int(rng.integers(len(scene.masks)))
        if i % 2:
            images.append(scene.image)
        else:
            images.append(masked_crop(scene.image, scene.masks[k], margin=float(rng.uniform(0.0, 0.3))))
        labels.append(list(COLORS).index(scene.colors[k]) * n_shapes + SHAPES.index(scene.shapes[k]))
    return images, np.array(labels)


def train_tiny_clip(out_dir: Union[str, Path], steps: int = 150, warmup_steps: int = 250, batch_size: int = 64,
                    n_images: int = 1024, seed: int = 0, lr: float = 3e-3, threads: Optional[int] = 1,
                    log: Optional[Callable[[str], None]] = None) -> Path:
    """Train the tiny open_clip model on shapes and save it to `out_dir`; returns the folder.

    Two phases. A tiny CLIP trained contrastively from scratch learns colour and then sits in a
    saddle: its random text tower barely separates "circle" from "square", so the image tower gets
    no signal for shape, and vice versa. So for `warmup_steps` the image tower first learns the
    12 classes against fixed random orthonormal class vectors; then both towers train together
    for `steps` with CLIP's image -> caption cross-entropy over every caption (phrased with a
    different template each step). `threads` caps torch's CPU threads while training (restored)."""
    from ..clip import load_clip

    out_dir = Path(out_dir)
    random_tiny_open_clip(out_dir, seed)
    clip = load_clip(str(out_dir))
    images, labels = training_crops(n_images, seed)
    pixels = clip._preprocess(images)
    labels = torch.from_numpy(labels)
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    model = clip.model.train()
    anchors = torch.linalg.qr(torch.randn(TINY_OPEN_CLIP_CONFIG["embed_dim"], len(kinds), generator=gen))[0].T
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    start = time.perf_counter()
    try:
        for step in range(warmup_steps + steps):
            idx = torch.randint(len(pixels), (batch_size,), generator=gen)
            image_emb = torch.nn.functional.normalize(model.encode_image(pixels[idx]), dim=-1)
            if step < warmup_steps:
                logits = 10.0 * image_emb @ anchors.T
            else:
                template = TEMPLATES[step % len(TEMPLATES)]
                tokens = clip._tokenize([template.format(color=c, shape=s) for c, s in kinds])["input_ids"]
                text_emb = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
                logits = model.logit_scale.exp() * image_emb @ text_emb.T
            loss = torch.nn.functional.cross_entropy(logits, labels[idx])
            optim.zero_grad()
            loss.backward()
            optim.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
            if log and (step % 50 == 0 or step == warmup_steps + steps - 1):
                acc = (logits.argmax(1) == labels[idx]).float().mean()
                log(f"step {step}: loss {loss.item():.3f}, batch accuracy {acc:.2f}, {time.perf_counter() - start:.0f} s")
    finally:
        torch.set_num_threads(previous_threads)
    return save_open_clip_folder(model.eval(), out_dir)


def tiny_trained_clip(cache_dir: Union[str, Path], **train_kwargs) -> Path:
    """The trained tiny CLIP folder under `cache_dir` (trained now if it is not there yet).
    Pytest: `tiny_trained_clip(tmp_path_factory.getbasetemp() / "clip")` in a session fixture."""
    folder = Path(cache_dir) / TINY_OPEN_CLIP_NAME
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / ".trained").is_file():
        train_tiny_clip(folder, **train_kwargs)
        (folder / ".trained").write_text("ok")
    return folder


def shape_accuracy(clip, n: int = 96, seed: int = 123) -> float:
    """Fraction of held-out single-shape images whose best caption (of all 12) is their own."""
    scenes = shapes_dataset(n, size=64, seed=seed, shapes_per_image=1)
    texts = [caption(c, s) for c in COLORS for s in SHAPES]
    sims = clip.similarity([s.image for s in scenes], texts)
    truth = np.array([texts.index(s.captions[0]) for s in scenes])
    return float((sims.argmax(1) == truth).mean())


# ---- transformers ------------------------------------------------------------------------------

def tiny_hf_clip_config():
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )


def tiny_hf_clip(out_dir: Union[str, Path], seed: int = 0) -> Path:
    """A random tiny transformers `CLIPModel` with CLIP's real tokenizer (rebuilt offline from open_clip's
    BPE file) and a `CLIPImageProcessor` for 32-pixel inputs, saved to `out_dir` (safetensors)."""
    from transformers import CLIPImageProcessor, CLIPModel

    from .tokenizers import clip_tokenizer

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    CLIPModel(tiny_hf_clip_config()).eval().save_pretrained(out_dir)
    clip_tokenizer(out_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out_dir)
    return out_dir

"""Tiny CLIPs for tests: an open_clip model trained on synthetic shapes, and a random transformers
`CLIPModel`, each saved and loaded back through the real loading code.

A random CLIP cannot rank anything, so the open_clip one is trained on `grounded.testing.shapes`
(single-shape images, masked crops of shapes, of parts of shapes and of backgrounds, against
captions like "a red circle", "part of a red circle", "the background"): 450 steps, about a minute
on one idle CPU thread (two to three when the machine is busy). Measured on 200 held-out
single-shape images, it names 98.5% of them right out of the 12 captions (colour 100%):

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
# CLIP's real BPE vocabulary (open_clip's SimpleTokenizer); short context for short captions.
_TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
# A ViT image tower: the layout transformers' CLIPModel also has (loading and parity tests).
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 4},
    "text_cfg": _TEXT_CFG,
}
# The model trained on shapes has a ResNet image tower: at this size it learns shapes several times
# faster than the ViT (held-out accuracy after 300 steps about 0.85 against 0.65).
TINY_SHAPES_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16},
    "text_cfg": _TEXT_CFG,
}
TINY_PREPROCESS_CONFIG = {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                          "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                          "resize_mode": "shortest"}
TEMPLATES = ("a {color} {shape}", "the {color} {shape}", "{color} {shape}", "a {shape} that is {color}")
WEIGHTS_FILE = "open_clip_model.safetensors"


def save_open_clip_folder(model: torch.nn.Module, out_dir: Union[str, Path], model_cfg: Optional[dict] = None) -> Path:
    """Write `model` in open_clip's folder layout: open_clip_config.json (`model_cfg`, default
    TINY_OPEN_CLIP_CONFIG) + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg or TINY_OPEN_CLIP_CONFIG, "preprocess_cfg": TINY_PREPROCESS_CONFIG}
    (out_dir / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    return out_dir


def random_tiny_open_clip(out_dir: Union[str, Path], seed: int = 0, model_cfg: Optional[dict] = None) -> Path:
    """A random tiny open_clip model (`model_cfg`, default TINY_OPEN_CLIP_CONFIG) saved as a folder."""
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model_cfg = model_cfg or TINY_OPEN_CLIP_CONFIG
    return save_open_clip_folder(CLIP(**model_cfg), out_dir, model_cfg)


def class_texts(template: str = TEMPLATES[0]) -> List[str]:
    """The captions of the training classes, in label order: the 12 whole shapes (phrased with
    `template`), then a part of each, then the background."""
    kinds = [(c, s) for c in COLORS for s in SHAPES]
    return ([template.format(color=c, shape=s) for c, s in kinds]
            + [f"part of a {c} {s}" for c, s in kinds] + ["the background"])


def _part(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """30-70% of a shape, cut by a horizontal or vertical line."""
    ys, xs = np.nonzero(mask)
    axis_values = xs if rng.random() < 0.5 else ys
    lo, hi = axis_values.min(), axis_values.max() + 1
    cut = lo + rng.uniform(0.3, 0.7) * (hi - lo)
    keep = axis_values < cut if rng.random() < 0.5 else axis_values >= cut
    part = np.zeros_like(mask)
    part[ys[keep], xs[keep]] = True
    return part


def training_crops(n: int, seed: int = 0, size: int = 64) -> tuple:
    """`n` training images with class indices into `class_texts()`: what CLIP sees of the masks
    SAM's automatic generator offers. In turn: a whole single-shape image, the masked crop of a
    shape in a scene of one to three, the masked crop of part of a shape (labelled "part of a ..."),
    and the masked crop of a scene's background (labelled "the background")."""
    from ..clip.crops import masked_crop

    rng = np.random.default_rng(seed)
    images: List[np.ndarray] = []
    labels: List[int] = []
    n_kinds = len(COLORS) * len(SHAPES)
    for i in range(n):
        kind = i % 4
        scene = draw_scene(rng, size, 1 if kind == 0 else int(rng.integers(1, 4)))
        k = int(rng.integers(len(scene.masks)))
        label = list(COLORS).index(scene.colors[k]) * len(SHAPES) + SHAPES.index(scene.shapes[k])
        margin = float(rng.uniform(0.0, 0.3))
        if kind == 0:
            images.append(scene.image)
        elif kind == 1:
            images.append(masked_crop(scene.image, scene.masks[k], margin=margin))
        elif kind == 2:
            images.append(masked_crop(scene.image, _part(scene.masks[k], rng), margin=margin))
            label += n_kinds
        else:
            images.append(masked_crop(scene.image, ~scene.masks.any(axis=0), margin=margin))
            label = 2 * n_kinds
        labels.append(label)
    return images, np.array(labels)


def train_tiny_clip(out_dir: Union[str, Path], steps: int = 150, warmup_steps: int = 300, batch_size: int = 64,
                    n_images: int = 1600, seed: int = 0, lr: float = 3e-3, threads: Optional[int] = 1,
                    log: Optional[Callable[[str], None]] = None) -> Path:
    """Train the tiny open_clip model on shapes and save it to `out_dir`; returns the folder.

    Two phases. A tiny CLIP trained contrastively from scratch learns colour and then sits in a
    saddle: its random text tower barely separates "circle" from "square", so the image tower gets
    no signal for shape, and vice versa. So for `warmup_steps` the image tower first learns the
    classes (`class_texts`) against fixed random orthonormal class vectors; then both towers train
    together for `steps` with CLIP's image -> caption cross-entropy over every class's caption
    (whole shapes phrased with a different template each step). `threads` caps torch's CPU threads while training (restored)."""
    from ..clip import load_clip

    out_dir = Path(out_dir)
    random_tiny_open_clip(out_dir, seed, TINY_SHAPES_CLIP_CONFIG)
    clip = load_clip(str(out_dir))
    images, labels = training_crops(n_images, seed)
    pixels = clip._preprocess(images)
    labels = torch.from_numpy(labels)
    n_classes = len(class_texts())
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    model = clip.model.train()
    anchors = torch.linalg.qr(torch.randn(TINY_SHAPES_CLIP_CONFIG["embed_dim"], n_classes, generator=gen))[0].T
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
                tokens = clip._tokenize(class_texts(template))["input_ids"]
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
    return save_open_clip_folder(model.eval(), out_dir, TINY_SHAPES_CLIP_CONFIG)


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


def hf_clip_from_open_clip(open_clip_dir: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """The tiny ViT open_clip model (`TINY_OPEN_CLIP_CONFIG`) rewritten as a
    transformers `CLIPModel` folder with the same weights (q/k/v split out of open_clip's fused
    in_proj, projections transposed, GELU as open_clip uses it), CLIP's tokenizer and a 32-pixel
    image processor: the same network through the other backend."""
    from safetensors.torch import load_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from .tokenizers import clip_tokenizer

    cfg = TINY_OPEN_CLIP_CONFIG
    vis, txt = cfg["vision_cfg"], cfg["text_cfg"]
    config = CLIPConfig(
        text_config=dict(vocab_size=txt["vocab_size"], hidden_size=txt["width"], intermediate_size=4 * txt["width"],
                         num_hidden_layers=txt["layers"], num_attention_heads=txt["heads"],
                         max_position_embeddings=txt["context_length"], hidden_act="gelu", layer_norm_eps=1e-5,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=0),
        vision_config=dict(hidden_size=vis["width"], intermediate_size=4 * vis["width"], num_hidden_layers=vis["layers"],
                           num_attention_heads=vis["width"] // vis["head_width"], image_size=vis["image_size"],
                           patch_size=vis["patch_size"], hidden_act="gelu", layer_norm_eps=1e-5),
        projection_dim=cfg["embed_dim"],
    )
    src = load_file(str(Path(open_clip_dir) / WEIGHTS_FILE))
    dst = {
        "logit_scale": src["logit_scale"],
        "text_model.embeddings.token_embedding.weight": src["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": src["positional_embedding"],
        "text_model.final_layer_norm.weight": src["ln_final.weight"],
        "text_model.final_layer_norm.bias": src["ln_final.bias"],
        "text_projection.weight": src["text_projection"].T,
        "vision_model.embeddings.class_embedding": src["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": src["visual.positional_embedding"],
        "vision_model.embeddings.patch_embedding.weight": src["visual.conv1.weight"],
        "vision_model.pre_layrnorm.weight": src["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": src["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": src["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": src["visual.ln_post.bias"],
        "visual_projection.weight": src["visual.proj"].T,
    }
    for tower, prefix, layers in (("text_model", "transformer", txt["layers"]),
                                  ("vision_model", "visual.transformer", vis["layers"])):
        for i in range(layers):
            a, b = f"{prefix}.resblocks.{i}", f"{tower}.encoder.layers.{i}"
            for q, name in zip(src[f"{a}.attn.in_proj_weight"].chunk(3), ("q", "k", "v")):
                dst[f"{b}.self_attn.{name}_proj.weight"] = q
            for q, name in zip(src[f"{a}.attn.in_proj_bias"].chunk(3), ("q", "k", "v")):
                dst[f"{b}.self_attn.{name}_proj.bias"] = q
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                for p in ("weight", "bias"):
                    dst[f"{b}.{theirs}.{p}"] = src[f"{a}.{ours}.{p}"]
    model = CLIPModel(config).eval()
    missing, unexpected = model.load_state_dict({k: v.contiguous() for k, v in dst.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> transformers mapping incomplete: missing {missing}, unexpected {unexpected}")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    clip_tokenizer(out_dir)
    size = vis["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out_dir)
    return out_dir

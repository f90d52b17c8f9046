"""The SAM trainer: AdamW with warm-up and step decay (optionally layer-wise lr decay), a frozen
image encoder whose embeddings are cached on disk, autocast, gradient accumulation, checkpoints
that resume exactly, and a progress bar with the loss and mIoU.

Exact resume: the image order and every random draw of a step come from generators seeded by
(seed, step, micro-batch), not from state carried across steps, so a resumed run draws what an
uninterrupted one would; the model, optimizer, scheduler, step and the global RNG states are saved.

SAM 2 / 2.1 (`grounded.sam2.Sam2`, which `model:` loads when the weights are SAM 2's) trains the same
way: its image is stretched to the square input (not padded), the cache holds its image encoder's
levels (the decoder's high-res projections may train, so they are applied on every round), the SAM 1
names `mask_decoder` and `prompt_encoder` in `trainable` stand for its `sam_mask_decoder` and
`sam_prompt_encoder`, and its object-score head is trained too (losses.py).
"""

import hashlib
import math
import os
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from ...checkpoint_state import plain, restore_rng, rng_state
from ..cpu import clear_cache
from .config import TrainConfig
from .data import TrainItem, checked_item, select_masks
from .interactive import run_interactive


@dataclass
class Prepared:
    embedding: Union[torch.Tensor, List[torch.Tensor]]  # 1 x C x h x w (SAM 2: its encoder's levels)
    input_size: tuple  # (h, w) of the resized image in the padded input
    targets: torch.Tensor  # N x 256 x 256 float, the low-res frame
    masks: np.ndarray  # N x H x W bool, the same masks at the original size


def low_res_targets(masks: np.ndarray, input_size, img_size: int, low_res: int) -> torch.Tensor:
    """Masks N x H x W (original size) -> N x low x low in the model's low-res frame: resized as the
    image is (long side to img_size), padded bottom/right, area-downsampled, thresholded at 0.5."""
    t = torch.as_tensor(np.ascontiguousarray(masks), dtype=torch.float32)[:, None]
    scale = low_res / img_size
    h, w = max(1, round(input_size[0] * scale)), max(1, round(input_size[1] * scale))
    t = F.interpolate(t, (h, w), mode="area") if t.shape[-2] >= h else F.interpolate(t, (h, w), mode="bilinear")
    t = F.pad(t, (0, low_res - w, 0, low_res - h))
    return (t[:, 0] >= 0.5).float()


class EmbeddingCache:
    """Image-encoder outputs on disk, keyed by the image's pixels and the encoder's weights, and the
    most recent in memory up to `memory_bytes` (with a folder; all of them without one): SAM 2's
    levels take about 88 MB an image at 1024 pixels, SAM's embedding 4 MB."""

    def __init__(self, folder: Optional[Path], model, memory_bytes: int = 2 << 30):
        self.folder = Path(folder) if folder else None
        self.memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.memory_bytes = memory_bytes
        digest = hashlib.blake2b(digest_size=8)
        for name, tensor in model.image_encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().float().flatten()[:64].cpu().numpy().tobytes())
            digest.update(repr(tuple(tensor.shape)).encode())
        self.model_key = digest.hexdigest()
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def key(self, image: np.ndarray) -> str:
        digest = hashlib.blake2b(image.tobytes(), digest_size=16)
        digest.update(repr(image.shape).encode())
        digest.update(self.model_key.encode())
        return digest.hexdigest()

    def get(self, image: np.ndarray, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = self.key(image)
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        path = self.folder / f"{key}.pt" if self.folder else None
        emb = None
        if path is not None and path.is_file():
            try:
                emb = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged file (a copy cut short): encoded again, rewritten
                emb = None
        if emb is None:
            emb = _map_tensors(encode(), lambda t: t.detach().cpu())
            if path is not None:
                tmp = path.with_suffix(".tmp")
                torch.save(emb, tmp)
                os.replace(tmp, path)
        self.memory[key] = emb
        while self.folder is not None and len(self.memory) > 1 and self._held() > self.memory_bytes:
            self.memory.popitem(last=False)  # the oldest: read from disk again when its image returns
        return emb

    def _held(self) -> int:
        return sum(t.numel() * t.element_size() for emb in self.memory.values() for t in _as_list(emb))


def layer_scale(name: str, model, layer_decay: float) -> float:
    """lr multiplier for a parameter: image-encoder block i of L gets layer_decay ** (L + 1 - i)
    (patch embedding: layer 0; neck: L + 1); the prompt encoder and mask decoder get 1."""
    if layer_decay == 1.0 or not name.startswith("image_encoder."):
        return 1.0
    enc = model.image_encoder
    if hasattr(enc, "trunk"):  # SAM 2's Hiera: its blocks in one list across the stages
        depth = len(enc.trunk.blocks)
        parts = name.split(".")
        if parts[1] == "trunk" and parts[2] == "blocks":
            layer = int(parts[3]) + 1
        elif parts[1] == "trunk":
            layer = 0  # patch embedding, position embeddings
        else:
            layer = depth + 1  # the neck
    elif hasattr(enc, "blocks"):  # ViT
        depth = len(enc.blocks)
        parts = name.split(".")
        if parts[1] == "blocks":
            layer = int(parts[2]) + 1
        elif parts[1] in ("patch_embed", "pos_embed"):
            layer = 0
        else:
            layer = depth + 1
    else:  # TinyViT: blocks counted across its stages
        counts = [len(getattr(stage, "blocks", [])) or 1 for stage in enc.layers]
        depth = sum(counts)
        parts = name.split(".")
        if parts[1] == "layers":
            stage = int(parts[2])
            inner = int(parts[4]) if len(parts) > 4 and parts[3] == "blocks" else counts[stage] - 1
            layer = sum(counts[:stage]) + inner + 1
        elif parts[1] == "patch_embed":
            layer = 0
        else:
            layer = depth + 1
    return layer_decay ** (depth + 1 - layer)


def lr_factor(step: int, warmup_steps: int, decay_steps: List[int], decay_factor: float) -> float:
    """Linear warm-up over warmup_steps, then x decay_factor at each of decay_steps."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * decay_factor ** sum(step >= s for s in decay_steps)


# What a resumed run may set otherwise than the checkpoint's run: how long it goes, the lr schedule of
# the steps to come, where and how often it writes, what it shows, where it runs.
RESUME_MAY_CHANGE = ("steps", "warmup_steps", "decay_steps", "decay_factor", "checkpoint_every",
                     "keep_checkpoints", "progress", "device", "out_dir", "embedding_cache", "base_dir")


def config_changes(saved: Optional[dict], current: dict) -> List[str]:
    """'key: saved -> current' for every setting outside RESUME_MAY_CHANGE that differs (none for a
    checkpoint that kept no config)."""
    if not saved:
        return []
    shorten = lambda v: (r if len(r := repr(v)) <= 80 else r[:77] + "...")  # noqa: E731
    return [f"{key}: {shorten(saved.get(key))} -> {shorten(value)}" for key, value in current.items()
            if key in saved and key not in RESUME_MAY_CHANGE and saved[key] != value]


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _map_tensors(x, fn):
    """fn on a tensor, or on each of a list of tensors (SAM 2's encoder levels)."""
    return [fn(t) for t in x] if isinstance(x, (list, tuple)) else fn(x)


class Trainer:
    """`model` and `dataset` default to what the config names; `clip` (a grounded.clip.ClipModel)
    to config.clip, for text-prompt training."""

    @torch.inference_mode(False)  # (loaded weights and optimizer state must be ordinary tensors)
    def __init__(self, config: TrainConfig, model=None, dataset=None, clip=None):
        from ...sam2 import Sam2, load_sam_or_sam2  # SAM's loader, or SAM 2's for SAM 2 / 2.1 weights
        from ..onnx_encoder import use_exported_encoder
        from .data import ConcatDataset, build_dataset

        self.config = config
        self.device = torch.device(config.device)
        self.model = model if model is not None else load_sam_or_sam2(str(config.path(config.model))
                                                                      if Path(config.base_dir, config.model).exists()
                                                                      else config.model, device=self.device)
        self.is_sam2 = isinstance(self.model, Sam2)
        if self.is_sam2 and config.text_prompt:
            raise ValueError("text_prompt: true trains a projection for SAM 1's prompt encoder (grounded.sam."
                             "text_prompt); the model is SAM 2: train it without text_prompt, or give a SAM 1 model")
        if not self.is_sam2:  # Training runs the PyTorch encoder, never an export (which computes no gradients).
            use_exported_encoder(self.model, "torch")
        self.model.to(self.device)
        if dataset is None:
            if not config.data:
                raise ValueError("the config names no training data (data: [{type: coco, ...}])")
            dataset = ConcatDataset([build_dataset(spec, Path(config.base_dir)) for spec in config.data])
        if len(dataset) == 0:
            raise ValueError("the training data holds no images")
        self.dataset = dataset
        self.out_dir = config.path(config.out_dir)
        self.clip = self.projection = None
        if config.text_prompt:
            from ..text_prompt import TextPromptProjection

            if clip is None:
                from ...clip import load_clip

                clip = load_clip(config.clip, config.clip_pretrained, device=str(self.device))
            self.clip = clip
            torch.manual_seed(config.seed)
            self.projection = TextPromptProjection(clip.embed_dim, self.model.prompt_encoder.embed_dim,
                                                   clip_model=config.clip or clip.name,
                                                   locator=config.text_locator).to(self.device)
        self._set_trainable()
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, config.warmup_steps, config.decay_steps, config.decay_factor))
        cache_dir = config.path(config.embedding_cache) if config.embedding_cache else self.out_dir / "embeddings"
        self.embeddings = EmbeddingCache(cache_dir if config.freeze_image_encoder else None, self.model)
        self.step = 0
        self.history: List[dict] = []

    # ------------------------------------------------------------------ setup

    def _set_trainable(self) -> None:
        names = [self._official_name(t) for t in self.config.trainable]
        if any(p.is_inference() for p in self.model.parameters()):
            raise ValueError("the model's weights were made under torch.inference_mode() and cannot train: build "
                             "or load it outside inference_mode, or let the trainer load config.model")
        found = set()
        for name, p in self.model.named_parameters():
            hit = [t for t in names if name == t or name.startswith(t + ".")]
            found.update(hit)
            p.requires_grad_(bool(hit))
        missing = set(names) - found
        if missing:
            top = ("image_encoder, sam_prompt_encoder (or prompt_encoder), sam_mask_decoder (or mask_decoder), "
                   "no_mem_embed") if self.is_sam2 else "image_encoder, prompt_encoder, mask_decoder"
            raise ValueError(f"trainable names {sorted(missing)} match no parameter of the "
                             f"{'SAM 2' if self.is_sam2 else 'SAM'} model (top-level modules: {top})")
        self.trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if self.projection is not None:
            self.trainable += [(f"text_prompt.{n}", p) for n, p in self.projection.named_parameters()]
        if not self.trainable:
            raise ValueError("nothing to train: trainable is empty")

    def _official_name(self, name: str) -> str:
        """SAM 2's state-dict name for a `trainable` entry that uses SAM 1's (mask_decoder.x ->
        sam_mask_decoder.x), so one config trains either family."""
        head, dot, rest = name.partition(".")
        if self.is_sam2 and head in ("mask_decoder", "prompt_encoder"):
            return f"sam_{head}{dot}{rest}"
        return name

    def _make_optimizer(self) -> torch.optim.Optimizer:
        groups: Dict[float, list] = {}
        for name, p in self.trainable:
            if name.startswith("text_prompt.locator_"):
                scale = self.config.text_locator_lr_scale
            elif name.startswith("text_prompt."):
                scale = self.config.text_lr_scale
            else:
                scale = layer_scale(name, self.model, self.config.layer_decay)
            groups.setdefault(scale, []).append(p)
        param_groups = [{"params": ps, "lr": self.config.lr * s, "lr_scale": s} for s, ps in sorted(groups.items())]
        return torch.optim.AdamW(param_groups, lr=self.config.lr, betas=tuple(self.config.betas),
                                 weight_decay=self.config.weight_decay)

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None)

    # ------------------------------------------------------------------ data

    def item_index(self, global_index: int) -> int:
        n = len(self.dataset)
        epoch, pos = divmod(global_index, n)
        return int(np.random.default_rng([self.config.seed, epoch]).permutation(n)[pos])

    def prepare(self, item: TrainItem, rng: np.random.Generator) -> Optional[Prepared]:
        model = self.model
        keep = select_masks(item.masks, rng, self.config.max_masks, self.config.max_mask_fraction)
        if len(keep) == 0:
            return None
        model_input, input_size, img_size = self._model_input(item.image)

        def encode():
            with torch.no_grad(), self._autocast():
                return _map_tensors(model.image_encoder(model_input()), lambda t: t.float())

        if self.config.freeze_image_encoder:
            embedding = _map_tensors(self.embeddings.get(item.image, encode), lambda t: t.to(self.device))
        else:
            with self._autocast():
                embedding = model.image_encoder(model_input())
        low_res = model.prompt_encoder.mask_input_size[0]
        targets = low_res_targets(item.masks[keep], input_size, img_size, low_res).to(self.device)
        visible = (targets.flatten(1).sum(1) > 0).cpu().numpy()  # too small to survive downsampling: dropped
        if not visible.any():
            return None
        return Prepared(embedding, tuple(input_size), targets[torch.as_tensor(visible, device=targets.device)],
                        item.masks[keep][visible])

    def _model_input(self, image: np.ndarray):
        """A function giving the encoder's 1 x 3 x S x S input for `image`, the (h, w) the image takes
        in it, and S. SAM pads the image, resized to a long side of S, at the bottom and right; SAM 2
        stretches it to the square."""
        model = self.model
        if self.is_sam2:
            size = model.image_size
            return (lambda: model.preprocess_image(image)[None].to(model.dtype)), (size, size), size
        from ..utils.transforms import ResizeLongestSide

        img_size = model.image_encoder.img_size
        transform = ResizeLongestSide(img_size)
        input_size = transform.get_preprocess_shape(image.shape[0], image.shape[1], img_size)

        def model_input() -> torch.Tensor:
            x = torch.as_tensor(transform.apply_image(image), device=self.device).permute(2, 0, 1).float()
            return model.preprocess(x)[None].to(model.dtype)

        return model_input, input_size, img_size

    # ------------------------------------------------------------------ training

    @torch.inference_mode(False)
    @torch.enable_grad()
    def train_step(self) -> dict:
        """One optimizer step over grad_accum images (with autograd, whatever the caller's grad mode)."""
        cfg = self.config
        self.model.train()
        if cfg.freeze_image_encoder:
            self.model.image_encoder.eval()
        self.optimizer.zero_grad(set_to_none=True)
        losses, first, last = [], [], []
        for micro in range(cfg.grad_accum):
            rng = np.random.default_rng([cfg.seed, self.step, micro, 1])
            item = checked_item(self.dataset[self.item_index(self.step * cfg.grad_accum + micro)])
            prepared = self.prepare(item, rng)
            if prepared is None:
                continue
            if self.projection is not None:
                from .text import text_prompt_step

                self.projection.train()
                with self._autocast():
                    out = text_prompt_step(self.model, self.projection, self.clip, item.image, prepared.masks,
                                           prepared.embedding, prepared.targets, rng, cfg.text_crop_expand,
                                           cfg.text_zero_outside, cfg.interactive.iou_weight, cfg.text_locator_weight)
                (out.loss / cfg.grad_accum).backward()
                iou = float(out.ious.gather(1, out.chosen[:, None]).mean())
                losses.append(float(out.loss.detach()))
                first.append(iou)
                last.append(iou)
                continue
            # A training encoder runs once per image, not once per round: the rounds back-propagate
            # into a detached copy of its output, whose gradient then goes through the encoder.
            encoder_output = None if cfg.freeze_image_encoder else prepared.embedding
            embedding = prepared.embedding if encoder_output is None else \
                _map_tensors(encoder_output, lambda t: t.detach().requires_grad_())
            with self._autocast():
                result = run_interactive(self.model, embedding, prepared.targets, prepared.input_size, rng,
                                         cfg.interactive, backward=lambda loss: (loss / cfg.grad_accum).backward())
            if encoder_output is not None:
                outputs, copies = _as_list(encoder_output), _as_list(embedding)
                used = [(o, c.grad) for o, c in zip(outputs, copies) if c.grad is not None]
                torch.autograd.backward([o for o, _ in used], [g for _, g in used])
            losses.append(result.loss)
            first.append(result.first_iou)
            last.append(result.last_iou)
        if losses:
            self.optimizer.step()
            clear_cache(self.model)  # the decoder's kept image-only products came from the old weights
        with warnings.catch_warnings():
            # A step whose images held no mask skips the optimizer, but the schedule still follows the step
            # count (as a resumed run's does); torch would warn about that order when it is the first step.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        self.step += 1
        record = {"step": self.step, "loss": float(np.mean(losses)) if losses else math.nan,
                  "miou": float(np.mean(first)) if first else math.nan,
                  "miou_last": float(np.mean(last)) if last else math.nan,
                  "lr": self.optimizer.param_groups[-1]["lr"]}
        self.history.append(record)
        return record

    def train(self, steps: Optional[int] = None, progress: Optional[bool] = None) -> List[dict]:
        """Train until `steps` (default config.steps) optimizer steps in total, checkpointing as configured."""
        from tqdm.auto import tqdm

        cfg = self.config
        total = steps if steps is not None else cfg.steps
        show = cfg.progress if progress is None else progress
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True,
                   disable=not show)
        try:
            while self.step < total:
                record = self.train_step()
                bar.update(1)
                # mIoU: the first round's (the single prompt's) mask against its target; last: after refinement
                bar.set_postfix(loss=f"{record['loss']:.4f}", mIoU=f"{record['miou']:.3f}",
                                last=f"{record['miou_last']:.3f}", lr=f"{record['lr']:.2e}")
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def state(self) -> dict:
        model_state = {k: v for k, v in self.model.state_dict().items()
                       if not (self.config.freeze_image_encoder and k.startswith("image_encoder."))}
        return {
            "step": self.step,
            "model": model_state,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "config": plain(self.config.to_dict()),
            "text_prompt": self.projection.state_dict() if self.projection is not None else {},
        }

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        path = Path(path) if path else self.checkpoint_dir / f"step_{self.step:07d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        if path.parent == self.checkpoint_dir:
            for p in self.checkpoints()[: -self.config.keep_checkpoints]:
                p.unlink()
        return path

    def checkpoints(self) -> List[Path]:
        """The run's checkpoints, oldest first (by step number; other files in the folder are not one)."""
        found = self.checkpoint_dir.glob("step_*.pt") if self.checkpoint_dir.is_dir() else []
        steps = {p: p.stem[len("step_"):] for p in found}
        return sorted((p for p, n in steps.items() if n.isdigit()), key=lambda p: int(steps[p]))

    def latest_checkpoint(self) -> Optional[Path]:
        found = self.checkpoints()
        return found[-1] if found else None

    @torch.inference_mode(False)
    def load_checkpoint(self, path: Optional[Path] = None) -> Path:
        """Continue from `path` (default: the newest checkpoint). The config must be the checkpoint's,
        but for RESUME_MAY_CHANGE: a resumed run goes on as the interrupted one would have."""
        path = Path(path) if path else self.latest_checkpoint()
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from in {self.checkpoint_dir}")
        state = self._read_checkpoint(path)
        changed = config_changes(state.get("config"), plain(self.config.to_dict()))
        if changed:
            raise ValueError(f"cannot resume from {path}: the config differs from the run's in "
                             f"{'; '.join(changed)}. A resumed run continues the same training; only "
                             f"{', '.join(RESUME_MAY_CHANGE)} may change. Set the others back, or train into "
                             "a new out_dir")
        try:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as err:  # shapes that differ: another architecture
            raise ValueError(f"{path} does not fit this model: {str(err).splitlines()[-1].strip()}") from None
        if unexpected or any(not k.startswith("image_encoder.") for k in missing):
            raise ValueError(f"{path} does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The lr of the next step from this config's schedule (warm-up and decay may have changed).
        factor = lr_factor(self.scheduler.last_epoch, self.config.warmup_steps, self.config.decay_steps,
                           self.config.decay_factor)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor
        if self.projection is not None:
            self.projection.load_state_dict(state["text_prompt"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        restore_rng(state["rng"])
        return path

    def _read_checkpoint(self, path: Path) -> dict:
        found = self.checkpoints()
        before = found[:found.index(path)] if path in found else found
        fix = f"delete it to resume from {before[-1].name}" if before else "delete it to start again"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for a damaged file
            reason = (str(err).splitlines() or [""])[0][:200]
            raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {reason}); the file is "
                             f"damaged or not one `grounded train` wrote: {fix}") from None
        needed = ("step", "model", "optimizer", "scheduler", "rng")
        if not isinstance(state, dict) or any(k not in state for k in needed):
            have = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{path} is not a checkpoint of `grounded train` (it needs {', '.join(needed)}; "
                             f"it holds {have}): {fix}")
        return state

    def save_model(self, folder: Optional[Path] = None) -> Path:
        """The trained SAM to out_dir/final (save_pretrained layout); with text_prompt, the projection
        to out_dir/text_prompt (and SAM only if some of it trained). Returns the main folder."""
        if self.is_sam2:
            from ...sam2 import save_pretrained
        else:
            from ..build import save_pretrained
        if self.projection is not None:
            self.projection.save_pretrained(self.out_dir / "text_prompt")
            if not any(p.requires_grad for p in self.model.parameters()):
                return self.out_dir / "text_prompt"
        return save_pretrained(self.model, folder or self.out_dir / "final")

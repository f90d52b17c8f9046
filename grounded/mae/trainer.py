"""The MAE pre-training loop: AdamW (no decay on biases and norms) with linear warm-up and a cosine
schedule, gradient accumulation, autocast, a progress bar with the loss, reconstruction figures,
held-out losses against the per-patch-mean baseline, and checkpoints that resume exactly.

Exact resume: a step's images, crops, flips and masks come from generators seeded by (seed, step,
micro-batch), the lr is a function of the step, and the model, optimizer, step and global RNG states
are saved, so N steps and N/2 + resume + N/2 reach the same weights. A resume whose config differs
in anything that decides those weights, or whose inputs changed, is refused with what differs."""

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..checkpoint_state import plain, restore_rng, rng_state
from .config import PretrainConfig
from .data import ImageSet
from .figures import reconstruction_figure, save_figure
from .load import MAECheckpointError, read_mae_weights, save_mae
from .model import MaskedAutoencoder, patch_targets, reconstruction_error
from .modes import outside_inference_mode


class Pretrainer:
    """`model`, `data` and `val_data` (ImageSets) default to what the config names. Construction,
    training and resuming work under grad mode, torch.no_grad and torch.inference_mode alike."""

    @outside_inference_mode(record_grad=True)
    def __init__(self, config: PretrainConfig, model: Optional[MaskedAutoencoder] = None,
                 data: Optional[ImageSet] = None, val_data: Optional[ImageSet] = None):
        self.config = config
        self.device = torch.device(config.device)
        self.out_dir = config.path(config.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.model = (model if model is not None else initial_model(config)).to(self.device)
        dims = self.model.config
        sets = dict(image_size=dims.image_size, min_size=dims.patch_size, crop_scale=config.crop_scale,
                    crop_ratio=config.crop_ratio, hflip=config.hflip, on_error=self._log_bad_file)
        if data is None and not config.data:
            raise ValueError("the config names no images (data: [folder/, 'glob/**/*.png', list.txt])")
        self.data = data if data is not None else ImageSet(config.resolved(config.data), **sets)
        self.val_data = val_data
        if val_data is None and config.val_data:
            self.val_data = ImageSet(config.resolved(config.val_data), **{**sets, "hflip": False})
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim > 1 and not n.endswith(".bias")]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.learning_rate, betas=tuple(config.betas))
        self.step = 0
        self.history: List[dict] = []
        self._permutation = (-1, None)

    # ------------------------------------------------------------------ schedule and data

    def lr_at(self, step: int) -> float:
        """Linear warm-up to the lr over the warm-up steps, then a half cosine down to min_lr."""
        cfg = self.config
        peak, warm = cfg.learning_rate, cfg.warmup
        if step < warm:
            return peak * (step + 1) / warm
        progress = (step - warm) / max(1, cfg.steps - warm)
        return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def sample_index(self, position: int) -> int:
        """The image at a position of the endless sample stream: a fresh permutation per epoch."""
        n = len(self.data)
        epoch, pos = divmod(position, n)
        if self._permutation[0] != epoch:
            self._permutation = (epoch, np.random.default_rng([self.config.seed, epoch]).permutation(n))
        return int(self._permutation[1][pos])

    def _autocast(self):
        dtype = torch.bfloat16 if self.config.precision == "bf16" else None
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None)

    def _log_bad_file(self, source: str, reason: str) -> None:
        print(f"[pretrain] skipped {source}: {reason}", file=sys.stderr)
        line = json.dumps({"source": source, "reason": reason}) + "\n"
        log = self.out_dir / "errors.jsonl"
        if not log.is_file() or line not in log.read_text().splitlines(keepends=True):  # once across resumes
            with open(log, "a") as f:
                f.write(line)

    # ------------------------------------------------------------------ training

    @outside_inference_mode(record_grad=True)
    def train_step(self) -> dict:
        """One optimizer step over grad_accum micro-batches of batch_size images."""
        cfg = self.config
        self.model.train()
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses = []
        for micro in range(cfg.grad_accum):
            rng = np.random.default_rng([cfg.seed, self.step, micro])
            masks = torch.Generator().manual_seed(int(rng.integers(2**62)))
            first = (self.step * cfg.grad_accum + micro) * cfg.batch_size
            images = self.data.batch([self.sample_index(first + k) for k in range(cfg.batch_size)], rng).to(self.device)
            with self._autocast():
                out = self.model(images, cfg.mask_ratio, generator=masks)
            loss = self.model.loss(images, out.pred, out.mask, cfg.norm_pix_loss)
            (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
        if not all(math.isfinite(v) for v in losses):
            raise RuntimeError(f"the loss is not finite at step {self.step + 1} ({losses}); lower the lr "
                               f"(now {lr:.3g}) or use precision fp32")
        self.optimizer.step()
        self.step += 1
        record = {"step": self.step, "loss": float(np.mean(losses)), "lr": lr}
        self.history.append(record)
        return record

    @outside_inference_mode(record_grad=True)
    def train(self, until: Optional[int] = None, progress: Optional[bool] = None) -> List[dict]:
        """Train to step `until` (default: config.steps), with checkpoints, figures and held-out losses
        as configured; at config.steps all three are written."""
        from tqdm.auto import tqdm

        cfg = self.config
        total = min(cfg.steps, until if until is not None else cfg.steps)
        show = cfg.progress if progress is None else progress
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain", unit="step", file=sys.stderr,
                   dynamic_ncols=True, disable=not show)
        try:
            while self.step < total:
                record = self.train_step()
                done = self.step == cfg.steps
                if self.val_data is not None and (done or (cfg.eval_every and self.step % cfg.eval_every == 0)):
                    record.update(self.evaluate(self.val_data))
                if cfg.figure_every and (done or self.step % cfg.figure_every == 0):
                    self.write_figure()
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.4f}" for k in ("loss", "val_loss") if k in record} | {"lr": f"{record['lr']:.2e}"})
                if done or self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ held-out loss and figures

    @torch.no_grad()
    def evaluate(self, images: ImageSet, crops: int = 4, seed: int = 1234) -> Dict[str, float]:
        """The loss on masked patches of `crops` crops per image (the centred square and random ones),
        masks and crops fixed by `seed`, and the per-patch-mean baseline on the same patches (1.0 with
        normalised pixels, up to the variance's n-1 and epsilon), and a stricter one: each masked
        patch predicted by its own per-channel means, i.e. its colour without any spatial structure
        (with ImageNet-normalised grey images that alone explains much of the normalised variance).
        Below the first, the model predicts more than the patch's average; below the second, it
        predicts spatial structure."""
        cfg = self.config
        self.model.eval()
        rng = np.random.default_rng([seed, 0])
        masks = torch.Generator().manual_seed(seed)
        which = [(i, k) for i in range(len(images)) for k in range(crops)]
        total = baseline = channel_baseline = count = 0.0
        for start in range(0, len(which), cfg.batch_size):
            batch = torch.stack([images.center(i) if k == 0 else images.sample(i, rng)
                                 for i, k in which[start:start + cfg.batch_size]]).to(self.device)
            with self._autocast():
                out = self.model(batch, cfg.mask_ratio, generator=masks)
            p = self.model.config.patch_size
            target = patch_targets(batch, p, cfg.norm_pix_loss)
            mean_only = target.mean(dim=-1, keepdim=True).expand_as(target)
            channels = target.unflatten(-1, (-1, batch.shape[1]))  # B x L x p*p x C
            channel_means = channels.mean(dim=-2, keepdim=True).expand_as(channels).flatten(-2)
            total += float((reconstruction_error(batch, out.pred, p, cfg.norm_pix_loss) * out.mask).sum())
            baseline += float((((mean_only - target) ** 2).mean(-1) * out.mask).sum())
            channel_baseline += float((((channel_means - target) ** 2).mean(-1) * out.mask).sum())
            count += float(out.mask.sum())
        self.model.train()
        return {"val_loss": total / count, "val_baseline": baseline / count,
                "val_channel_baseline": channel_baseline / count}

    def figure_images(self) -> torch.Tensor:
        images = self.val_data if self.val_data is not None else self.data
        k = min(self.config.figure_images, len(images))
        picks = np.linspace(0, len(images) - 1, k).round().astype(int)
        return torch.stack([images.center(int(i)) for i in picks]).to(self.device)

    def write_figure(self, path: Optional[Path] = None) -> Path:
        path = Path(path) if path else self.out_dir / "figures" / f"step_{self.step:07d}.png"
        generator = torch.Generator().manual_seed(self.config.seed)
        with self._autocast():
            figure = reconstruction_figure(self.model, self.figure_images(), self.config.mask_ratio,
                                           self.config.norm_pix_loss, generator, title=f"step {self.step}")
        save_figure(figure, path)
        return path

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def data_digest(self) -> str:
        return hashlib.sha256("\n".join(self.data.sources).encode()).hexdigest()[:16]

    def state(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "mae_config": self.model.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "history": self.history,
            "config": plain(self.config.to_dict()),
            "data": {"images": len(self.data), "digest": self.data_digest()},
        }

    def save_checkpoint(self, path: Optional[Path] = None) -> Path:
        path = Path(path) if path else self.checkpoint_dir / f"step_{self.step:07d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, path)
        history = self.out_dir / "history.jsonl"
        history.with_name("history.jsonl.tmp").write_text("".join(json.dumps(r) + "\n" for r in self.history))
        os.replace(history.with_name("history.jsonl.tmp"), history)
        if path.parent == self.checkpoint_dir:
            for old in sorted(self.checkpoint_dir.glob("step_*.pt"))[: -self.config.keep_checkpoints]:
                old.unlink()
        return path

    def latest_checkpoint(self) -> Optional[Path]:
        found = sorted(self.checkpoint_dir.glob("step_*.pt")) if self.checkpoint_dir.is_dir() else []
        return found[-1] if found else None

    @outside_inference_mode(record_grad=True)
    def load_checkpoint(self, path: Optional[Path] = None) -> Path:
        path = Path(path) if path else self.latest_checkpoint()
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from in {self.checkpoint_dir}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        differ = self.config.differences(state["config"])
        if differ:
            raise ValueError(f"{path} was written by a run with another config; resuming would not continue it. "
                             + "; ".join(f"{k}: {state['config'].get(k)!r} there, {getattr(self.config, k)!r} now"
                                         for k in differ) + ". Restore those values, or start a new out_dir")
        data = state["data"]
        if data["images"] != len(self.data) or data["digest"] != self.data_digest():
            raise ValueError(f"{path}: the inputs changed since the checkpoint ({data['images']} images then, "
                             f"{len(self.data)} now, or other files); a resume must read the same images")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        restore_rng(state["rng"])
        return path

    def save_model(self, folder: Optional[Path] = None) -> Path:
        """The pre-trained MAE (encoder and decoder) to out_dir/final, for `load_mae` and the SAM converter."""
        return save_mae(self.model, folder or self.out_dir / "final")


def initial_model(config: PretrainConfig) -> MaskedAutoencoder:
    """A new MAE of the config's dimensions, from `init`'s weights where given (its encoder, and its
    decoder when it has one of the same size; the fixed position embeddings are the model's own)."""
    dims = config.mae_config()
    model = MaskedAutoencoder(dims)
    if not config.init:
        return model
    source = config.path(config.init) if config.path(config.init).exists() else config.init
    weights = read_mae_weights(source)
    theirs = weights.config
    if (theirs.embed_dim, theirs.depth, theirs.num_heads, theirs.patch_size, theirs.mlp_ratio) != \
            (dims.embed_dim, dims.depth, dims.num_heads, dims.patch_size, dims.mlp_ratio):
        raise MAECheckpointError(f"init {config.init} is an encoder of width {theirs.embed_dim}, depth {theirs.depth}, "
                                 f"{theirs.num_heads} heads, {theirs.patch_size}-pixel patches, mlp ratio "
                                 f"{theirs.mlp_ratio}; the model is {dims.embed_dim}, {dims.depth}, {dims.num_heads}, "
                                 f"{dims.patch_size}, {dims.mlp_ratio}: set model: to match it")
    same_decoder = weights.has_decoder and (theirs.decoder_embed_dim, theirs.decoder_depth, theirs.decoder_num_heads) \
        == (dims.decoder_embed_dim, dims.decoder_depth, dims.decoder_num_heads)
    # The fixed position embeddings stay the model's own (its image size may differ from init's).
    loaded = {k: v for k, v in weights.state_dict.items() if k in model.state_dict() and not k.endswith("pos_embed")
              and (same_decoder or not k.startswith(("decoder_", "mask_token")))}
    model.load_state_dict(loaded, strict=False)
    return model

"""`grounded train CONFIG.yaml [--resume]`: fine-tune SAM or SAM 2 / 2.1 (see grounded/sam/training/config.py).

  grounded train nuclei.yaml                      # trains, checkpoints to out_dir/checkpoints, model to out_dir/final
  grounded train nuclei.yaml --resume             # continues from the newest checkpoint, exactly
  grounded train nuclei.yaml --set steps=500 --set interactive.box_prob=0
"""

import argparse
import time


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="fine-tune SAM or SAM 2.1 from a YAML config (the paper's losses and interactive loop)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML syntax), e.g. --set steps=200 --set lr=1e-4")
    p.set_defaults(func=run)


def _overrides(items):
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r} must be KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def resume_or_refuse(trainer, resume: bool) -> None:
    """With --resume, continue from the newest checkpoint; without, refuse a folder that holds some
    (shared by `grounded train` and `grounded pretrain`)."""
    if resume:
        path = trainer.load_checkpoint()
        print(f"resumed from {path} at step {trainer.step}")
    elif trainer.latest_checkpoint() is not None:
        raise ValueError(f"{trainer.checkpoint_dir} already holds checkpoints: pass --resume to continue, "
                         f"or set another out_dir")


def run(args: argparse.Namespace) -> int:
    from ..sam.training import TrainConfig, Trainer

    config = TrainConfig.from_yaml(args.config, _overrides(args.overrides))
    trainer = Trainer(config)
    resume_or_refuse(trainer, args.resume)
    start = time.time()
    history = trainer.train()
    final = trainer.save_model()
    last = history[-1] if history else {}
    print(f"trained to step {trainer.step} in {time.time() - start:.0f} s; last loss {last.get('loss', float('nan')):.4f}, "
          f"mIoU {last.get('miou', float('nan')):.3f}")
    if trainer.projection is not None:
        print(f"text-prompt projection: {trainer.out_dir / 'text_prompt'} (segment_text(..., mode='native', "
              f"projection=...))")
    if final != trainer.out_dir / "text_prompt":
        family = "sam2" if trainer.is_sam2 else "sam"
        print(f"model: {final} (load with grounded.{family}.from_pretrained('{final}'))")
    return 0

"""`grounded pretrain CONFIG.yaml [--resume]`: MAE pre-training of a ViT on your images (see
grounded/mae/config.py), and `--to-sam` to turn the result into SAM's image encoder.

  grounded pretrain pipelines/mae_pretrain.yaml              # checkpoints, figures, model in out_dir/final
  grounded pretrain pipelines/mae_pretrain.yaml --resume     # continues from the newest checkpoint, exactly
  grounded pretrain mae.yaml --set steps=5000 --set model.depth=6
  grounded pretrain --to-sam runs/mae/final --out runs/sam_from_mae        # + MobileSAM's prompt encoder and decoder
  grounded pretrain --to-sam mae_pretrain_vit_huge.pth --out sam_h --decoder-from sam_vit_h
"""

import argparse
import time


def add_cli(sub) -> None:
    p = sub.add_parser("pretrain", help="MAE pre-training of SAM's image encoder on your images; --to-sam converts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="pre-training config (YAML)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (YAML syntax), e.g. --set steps=200 --set model.depth=6")
    p.add_argument("--to-sam", metavar="WEIGHTS",
                   help="convert an MAE / ViT encoder (a pretrain folder or checkpoint, mae_pretrain_vit_*.pth, "
                        "a facebook/vit-mae-* folder or hub id) into SAM's image encoder and save a whole SAM")
    p.add_argument("--out", metavar="DIR", help="with --to-sam: the output folder (grounded.sam.from_pretrained reads it)")
    p.add_argument("--decoder-from", default="mobile_sam", metavar="SAM",
                   help="with --to-sam: the SAM whose prompt encoder and mask decoder are kept (default mobile_sam)")
    p.add_argument("--image-size", type=int, default=1024, help="with --to-sam: SAM's input size (default 1024)")
    p.add_argument("--window-size", type=int, default=14, help="with --to-sam: attention window (default 14)")
    p.add_argument("--global-blocks", default=None, metavar="I,J,...",
                   help="with --to-sam: blocks with global attention (default: the last of each quarter)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="with --to-sam: attention heads, for a .pth of unknown width (official widths are known)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.to_sam:
        return to_sam(args)
    if not args.config:
        raise ValueError("give a pre-training config (YAML), or --to-sam WEIGHTS --out DIR")
    from ..mae.config import PretrainConfig
    from ..mae.trainer import Pretrainer
    from .train import _overrides, resume_or_refuse

    config = PretrainConfig.from_yaml(args.config, _overrides(args.overrides))
    trainer = Pretrainer(config)
    resume_or_refuse(trainer, args.resume)
    bad = len(trainer.data.errors)
    print(f"{len(trainer.data)} images ({bad} skipped, see {trainer.out_dir / 'errors.jsonl'})" if bad
          else f"{len(trainer.data)} images")
    start = time.time()
    history = trainer.train()
    final = trainer.save_model()
    last = history[-1] if history else {}
    held_out = f", held-out {last['val_loss']:.4f} (per-patch-mean baseline {last['val_baseline']:.4f})" \
        if "val_loss" in last else ""
    print(f"trained to step {trainer.step} in {time.time() - start:.0f} s; last loss "
          f"{last.get('loss', float('nan')):.4f}{held_out}")
    print(f"model: {final}; figures: {trainer.out_dir / 'figures'}; into SAM: grounded pretrain --to-sam {final} --out DIR")
    return 0


def to_sam(args: argparse.Namespace) -> int:
    from ..mae.to_sam import mae_to_sam
    from ..sam import save_pretrained

    if not args.out:
        raise ValueError("--to-sam needs --out DIR")
    blocks = None if args.global_blocks is None else [int(b) for b in args.global_blocks.split(",") if b.strip()]
    start = time.time()
    model = mae_to_sam(args.to_sam, args.decoder_from, image_size=args.image_size, window_size=args.window_size,
                       global_blocks=blocks, num_heads=args.num_heads)
    save_pretrained(model, args.out)
    cfg = model.config
    print(f"SAM with a {cfg.encoder_depth}-block, {cfg.encoder_embed_dim}-wide encoder at {cfg.image_size} px "
          f"(global attention in blocks {list(cfg.encoder_global_attn_indexes)}), prompt encoder and mask decoder "
          f"from {args.decoder_from}: {args.out} ({time.time() - start:.1f} s). Fine-tune it with `grounded train` "
          f"(model: {args.out}, freeze_image_encoder: false).")
    return 0

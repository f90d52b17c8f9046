"""Issue 23's path into SAM: MobileSAM's real prompt encoder and mask decoder with a new small ViT
image encoder (+ neck), fine-tuned on three stardist quadrants from the MAE checkpoint and from a
random initialisation, same steps and seeds; the held-out quadrant's single-point mIoU for both.

    bin/python bench/pretrain_mae.py                                  # first: the MAE (/tmp/grounded_mae/mae/final)
    bin/python bench/mae_to_sam_stardist.py                           # 3 seeds, the settings below
    bin/python bench/mae_to_sam_stardist.py --seeds 0 --steps 4       # a quick look
    bin/python bench/mae_to_sam_stardist.py --out DIR                 # keep the runs' checkpoints in DIR ...
    bin/python bench/mae_to_sam_stardist.py --evaluate-from DIR       # ... and evaluate them again later

The encoder is the MAE's ViT-Ti/16 (192 wide, 6 blocks, 3 heads) converted by grounded.mae.to_sam
(windows of 14, global attention in SAM's blocks for 6: 0, 2, 3, 5; zero relative positions; the
position embedding interpolated; a new neck). SAM runs at 512 pixels here (each 256-pixel quadrant
upsampled 2x, the scale the MAE was pre-trained at), not 1024, to fit 2 shared CPU cores; the
converter's default is 1024. "Random" is the same conversion of an untrained MAE (the official MAE
initialisation: xavier weights, sine-cosine positions), so only the pre-training differs; the neck
is initialised from the seed in both.

Training is grounded.sam.training's Trainer (as bench/finetune_stardist.py): the image encoder and
the whole mask decoder train (the prompt encoder stays MobileSAM's), one quadrant per step, up to 8
nuclei per step, one prompt round. The figure is bench/finetune_stardist.py's: one point at each
held-out nucleus's most interior pixel, the top-scoring of the multimask outputs against the nucleus.
Printed per run: mIoU before and after with a bootstrap 95% interval over the held-out nuclei; per
initialisation: the mean over seeds with a t interval; the paired difference; wall and CPU time.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from finetune_stardist import load_nuclei, nucleus_ious, quadrants  # noqa: E402  (after the path is set)

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def bootstrap_interval(values: np.ndarray, seed: int = 0, rounds: int = 2000):
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (rounds, len(values)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def t_interval(values):
    values = np.asarray(values, float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = T_975.get(len(values) - 1, 1.96) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def encoder_weights(kind: str, mae_path: str, seed: int):
    import torch

    from grounded.mae import MaskedAutoencoder, read_mae_weights
    from grounded.mae.load import MAEWeights

    pretrained = read_mae_weights(mae_path)
    if kind == "mae":
        return pretrained
    torch.manual_seed(1000 + seed)
    model = MaskedAutoencoder(pretrained.config)
    return MAEWeights(model.state_dict(), pretrained.config, True, f"untrained MAE (seed {1000 + seed})")


def run_one(kind: str, seed: int, args, mobile, train_items, held, out: Path) -> dict:
    """Convert, fine-tune for args.steps, evaluate; or, with args.evaluate_from, read the model and the
    loss history of that earlier run's final checkpoint instead of training (no times then)."""
    import torch

    from grounded.mae.to_sam import mae_to_sam
    from grounded.sam import SamPredictor

    t0, c0 = time.time(), time.process_time()
    model = mae_to_sam(encoder_weights(kind, args.mae, seed), mobile, image_size=args.image_size, seed=seed)
    with torch.no_grad():
        before = nucleus_ious(SamPredictor(model), *held)
    if args.evaluate_from:
        history = load_finished_run(model, Path(args.evaluate_from) / f"{kind}_seed{seed}", seed, args)
    else:
        history = fine_tune(model, seed, args, train_items, out / f"{kind}_seed{seed}")
    model.eval()
    with torch.no_grad():
        after = nucleus_ious(SamPredictor(model), *held)
    quarter = max(1, len(history) // 4)
    result = dict(kind=kind, seed=seed, before=float(before.mean()), after=float(after.mean()),
                  interval=bootstrap_interval(after, seed), ious=after,
                  loss=(np.mean([h["loss"] for h in history[:quarter]]), np.mean([h["loss"] for h in history[-quarter:]])),
                  wall=time.time() - t0, cpu=time.process_time() - c0)
    lo, hi = result["interval"]
    timing = "evaluated only" if args.evaluate_from else f"{result['wall']:.0f} s wall, {result['cpu']:.0f} s CPU"
    print(f"{kind:>6} seed {seed}: held-out mIoU {result['before']:.4f} -> {result['after']:.4f} "
          f"[{lo:.4f}, {hi:.4f}]; training loss {result['loss'][0]:.4f} -> {result['loss'][1]:.4f} "
          f"(first/last quarter); {timing}", flush=True)
    return result


def fine_tune(model, seed: int, args, train_items, out_dir: Path) -> list:
    import torch

    from grounded.sam.training import TrainConfig, Trainer
    from grounded.sam.training.data import ArrayDataset

    torch.manual_seed(seed)
    config = TrainConfig(
        out_dir=str(out_dir), steps=args.steps, lr=args.lr, weight_decay=0.01,
        warmup_steps=max(1, args.steps // 10), max_masks=args.max_masks, freeze_image_encoder=False,
        trainable=["image_encoder", "mask_decoder"], checkpoint_every=10**9, seed=seed, progress=True,
        interactive=dict(point_rounds=0, no_point_rounds=0, box_prob=0.0))
    return Trainer(config, model=model, dataset=ArrayDataset(train_items)).train()


def load_finished_run(model, run_dir: Path, seed: int, args) -> list:
    """The weights and loss history of `run_dir`'s step-args.steps checkpoint into `model`, after
    checking that the run had this script's settings (steps, lr, nuclei per step, seed)."""
    import torch

    path = run_dir / "checkpoints" / f"step_{args.steps:07d}.pt"
    if not path.is_file():
        raise SystemExit(f"--evaluate-from: no {path} (a finished {args.steps}-step run of this script)")
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    wanted = dict(steps=args.steps, lr=args.lr, max_masks=args.max_masks, seed=seed,
                  trainable=["image_encoder", "mask_decoder"], warmup_steps=max(1, args.steps // 10))
    differing = {k: (config.get(k), v) for k, v in wanted.items() if config.get(k) != v}
    if differing:
        raise SystemExit(f"--evaluate-from: {path} was trained with other settings (found, wanted): {differing}")
    model.load_state_dict(checkpoint["model"])  # strict: another image size or encoder fails here
    return checkpoint["history"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mae", default="/tmp/grounded_mae/mae/final", help="the MAE (bench/pretrain_mae.py's output)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kinds", default="mae,random", help="which initialisations to run (a partial run's missing half)")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per run")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--max-masks", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="folder for the trainer's files (default: a temp dir)")
    parser.add_argument("--evaluate-from", default=None,
                        help="a finished run's --out folder: evaluate its {mae,random}_seedN final checkpoints, no training")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from grounded import weights
    from grounded.sam import from_pretrained

    start = time.time()
    image, labels = load_nuclei()
    quads = quadrants(image, labels)
    from grounded.sam.training.data import TrainItem

    train_items = [TrainItem(f"stardist_q{k}", im, np.stack([lab == i for i in np.unique(lab) if i != 0]))
                   for k, (im, lab) in enumerate(quads[:3])]
    held = quads[3]
    print(f"train: 3 quadrants, {sum(len(t.masks) for t in train_items)} nuclei; held out: bottom-right, "
          f"{len(np.unique(held[1])) - 1} nuclei; SAM at {args.image_size} px", flush=True)
    mobile = from_pretrained(weights.fetch("mobile_sam"))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="mae_to_sam_"))
    seeds = [int(s) for s in args.seeds.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - {"mae", "random"}:
        raise SystemExit(f"--kinds: mae and/or random, got {args.kinds!r}")
    results = {kind: [run_one(kind, s, args, mobile, train_items, held, out) for s in seeds] for kind in kinds}
    for kind, runs in results.items():
        mean, half = t_interval([r["after"] for r in runs])
        before, _ = t_interval([r["before"] for r in runs])
        print(f"{kind:>6}: held-out mIoU {mean:.4f} +- {half:.4f} (95% t interval over {len(runs)} seeds; "
              f"before fine-tuning {before:.4f})")
    if len(results) == 2:
        diff, half = t_interval([a["after"] - b["after"] for a, b in zip(results["mae"], results["random"])])
        print(f"MAE - random, paired by seed: {diff:+.4f} +- {half:.4f}")
    wall, cpu = time.time() - start, time.process_time()
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min) with {args.threads} threads; this process used {cpu:.0f} s "
          f"of CPU ({cpu / 60:.1f} min); load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

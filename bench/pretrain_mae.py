"""Issue 23's real-image proof: MAE pre-training of a small ViT on tiles of real images, within a CPU
budget, and its reconstruction loss on tiles of images it never saw against the per-patch-mean baseline.

    bin/python bench/pretrain_mae.py                         # 20 CPU-minutes, work folder /tmp/grounded_mae
    bin/python bench/pretrain_mae.py --cpu-minutes 2 --work /tmp/quick
    bin/python bench/pretrain_mae.py --evaluate                # the held-out figures of the finished run again

The images, all offline (each sha256-verified):
- the stardist nuclei image (512x512 fluorescence; `grounded weights`): its top-left, top-right and
  bottom-left quadrants are cut into 64-pixel tiles (stride 32) for training; the bottom-right quadrant,
  in 16 tiles, is held out. Tiles are upsampled 2x to 128, the scale bench/mae_to_sam_stardist.py
  gives SAM;
- the repository's samples/: astronaut.jpg for training; chelsea.jpg and coffee.jpg held out;
- scikit-image 0.25.2's bundled photos (members of its wheel, fetched once with pip download):
  brick, camera, cell, clock_motion, coins, color, grass, gravel, hubble_deep_field, ihc, moon,
  motorcycle_left, page, retina, rocket, text, for training.
Photos are scaled to at most 512 pixels a side and cut into 128-pixel tiles.

Printed and written to the work folder: the held-out loss (masked patches, normalised pixels) before
and after training for each held-out group, the baseline (each masked patch predicted by its own
mean: about 1.0) and a stricter one (its own per-channel means: its colour, no spatial structure),
curves.png, the reconstruction figures (figures/ during training, and
reconstruction_held_out.png), the MAE (mae/final, for bench/mae_to_sam_stardist.py), wall and CPU time.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SKIMAGE = "scikit-image==0.25.2"
PHOTOS = {
    "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
    "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    "cell.png": "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515",
    "clock_motion.png": "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
    "coins.png": "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
    "color.png": "7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e",
    "grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
    "gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
    "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
    "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    "moon.png": "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "page.png": "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
    "retina.jpg": "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
    "text.png": "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
}
MODEL = {"preset": "vit_tiny", "depth": 6, "image_size": 128}  # ViT-Ti width (192, 3 heads), 6 blocks


def skimage_photos() -> dict:
    """name -> path of scikit-image's bundled photos, from its wheel on the package registry (pip
    download, never installed), cached beside grounded's weights and verified by sha256."""
    from grounded import weights

    folder = weights.cache_folder() / "scikit-image-0.25.2"
    paths = {name: folder / name for name in PHOTOS}
    if all(p.is_file() and weights.sha256_of(p) == PHOTOS[n] for n, p in paths.items()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grounded-skimage-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-d", tmp, SKIMAGE], check=True, capture_output=True)
        wheel = next(Path(tmp).glob("*.whl"))
        for name, path in paths.items():
            weights.extract_member(wheel, f"skimage/data/{name}", path)
            if weights.sha256_of(path) != PHOTOS[name]:
                raise RuntimeError(f"sha256 mismatch for {name} from {SKIMAGE}")
    return paths


def tiles(image: np.ndarray, size: int, stride: int, out_size: int):
    from PIL import Image

    for y in range(0, image.shape[0] - size + 1, stride):
        for x in range(0, image.shape[1] - size + 1, stride):
            tile = Image.fromarray(np.ascontiguousarray(image[y:y + size, x:x + size]))
            yield (y, x), tile.resize((out_size, out_size), Image.BICUBIC) if size != out_size else tile


def write_tiles(name: str, image: np.ndarray, folder: Path, size: int, stride: int, out_size: int = 128) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for (y, x), tile in tiles(image, size, stride, out_size):
        tile.save(folder / f"{name}_{y:04d}_{x:04d}.png")
        count += 1
    return count


def photo(path) -> np.ndarray:
    from PIL import Image

    from grounded.io import load_image

    image = Image.fromarray(load_image(path))
    scale = min(1.0, 512 / max(image.size))
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    return np.asarray(image)


def prepare(work: Path) -> dict:
    """The tile folders: train/{nuclei,photos}, held_out/{nuclei,photos}; returns counts."""
    sys.path.insert(0, str(ROOT / "bench"))
    from finetune_stardist import load_nuclei, quadrants

    quads = quadrants(*load_nuclei())
    counts = {}
    for k, (image, _) in enumerate(quads[:3]):
        counts[f"train nuclei q{k}"] = write_tiles(f"q{k}", image, work / "train" / "nuclei", 64, 32)
    counts["held-out nuclei (bottom-right quadrant)"] = write_tiles("q3", quads[3][0], work / "held_out" / "nuclei", 64, 64)
    sources = {"astronaut": ROOT / "samples" / "astronaut.jpg", **{Path(n).stem: p for n, p in skimage_photos().items()}}
    counts["train photos"] = sum(write_tiles(n, photo(p), work / "train" / "photos", 128, 128) for n, p in sources.items())
    counts["held-out photos (chelsea, coffee)"] = sum(
        write_tiles(n, photo(ROOT / "samples" / f"{n}.jpg"), work / "held_out" / "photos", 128, 128) for n in ("chelsea", "coffee"))
    return counts


def make_config(work: Path, steps: int, args, run: str = "mae"):
    from grounded.mae.config import PretrainConfig

    return PretrainConfig(
        model=dict(MODEL), data=[str(work / "train")], val_data=[str(work / "held_out")], out_dir=str(work / run),
        steps=steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=max(1, steps // 20), checkpoint_every=50,
        figure_every=max(1, steps // 6), figure_images=6, eval_every=max(1, steps // 12), seed=args.seed, progress=True)


def calibrate(work: Path, args) -> float:
    """CPU seconds of one training step (the mean of steps 2-4 of a throwaway run)."""
    from grounded.mae.trainer import Pretrainer

    trainer = Pretrainer(make_config(work, 4, args, run="calibration"))
    trainer.train_step()
    start = time.process_time()
    for _ in range(3):
        trainer.train_step()
    return (time.process_time() - start) / 3


def plot_curves(history, baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], lw=0.8, label="training loss (masked patches)")
    evals = [r for r in history if "val_loss" in r]
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="held-out loss")
    ax.axhline(baseline, color="grey", ls="--", label=f"per-patch-mean baseline ({baseline:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE on normalised pixels")
    ax.set_ylim(0, max(1.3, max(r["loss"] for r in history[2:]) * 1.05))
    ax.legend()
    ax.set_title("MAE pre-training, ViT-Ti/16 (6 blocks) at 128 px, 2 shared CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def held_out_report(trainer, work: Path, label: str) -> dict:
    from grounded.mae.data import ImageSet

    out = {}
    for group in ("nuclei", "photos"):
        images = ImageSet([str(work / "held_out" / group)], image_size=128, min_size=16, hflip=False)
        result = trainer.evaluate(images, crops=8)
        out[group] = result
        print(f"{label}: held-out {group} ({len(images)} tiles x 8 crops): loss {result['val_loss']:.4f}, "
              f"per-patch-mean baseline {result['val_baseline']:.4f} "
              f"(ratio {result['val_loss'] / result['val_baseline']:.3f}); per-channel-mean baseline "
              f"{result['val_channel_baseline']:.4f} (colour only, no spatial structure)", flush=True)
    return out


def evaluate_finished(work: Path, args) -> int:
    """The held-out report of the MAE a finished run saved (same tiles, crops and masks as at its end)."""
    from grounded.mae import load_mae
    from grounded.mae.trainer import Pretrainer

    if not (work / "mae" / "final").is_dir():
        raise SystemExit(f"--evaluate: {work / 'mae' / 'final'} does not exist; run this script without --evaluate first")
    model = load_mae(work / "mae" / "final").train()
    steps = sum(1 for _ in (work / "mae" / "history.jsonl").open())
    trainer = Pretrainer(make_config(work, steps, args, run="evaluation"), model=model)
    after = held_out_report(trainer, work, f"the saved MAE ({steps} steps)")
    return 0 if all(after[g]["val_loss"] < 0.9 * after[g]["val_baseline"] for g in after) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/grounded_mae", help="work folder (tiles, run, figures)")
    parser.add_argument("--cpu-minutes", type=float, default=20.0, help="CPU budget of the whole script")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--evaluate", action="store_true",
                        help="no training: the held-out figures of the work folder's finished MAE (mae/final)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from grounded.mae.trainer import Pretrainer

    start = time.time()
    work = Path(args.work)
    if args.evaluate:
        return evaluate_finished(work, args)
    if (work / "mae" / "checkpoints").exists():
        raise SystemExit(f"{work} holds a run already; give another --work")
    counts = prepare(work)
    for what, n in counts.items():
        print(f"{what}: {n} tiles")
    per_step = calibrate(work, args)
    left = args.cpu_minutes * 60 - time.process_time()
    steps = max(10, min(args.max_steps, int(0.85 * left / per_step)))
    print(f"one step (batch {args.batch_size}) took {per_step:.2f} s of CPU: {steps} steps fit the budget", flush=True)
    trainer = Pretrainer(make_config(work, steps, args))
    held_out_report(trainer, work, "before training (random init)")
    history = trainer.train()
    trainer.save_model()
    after = held_out_report(trainer, work, f"after {steps} steps")
    plot_curves(history, history[-1]["val_baseline"], work / "curves.png")
    figure = trainer.write_figure(work / "reconstruction_held_out.png")
    wall, cpu = time.time() - start, time.process_time()
    print(f"curves: {work / 'curves.png'}; figures: {figure}, {work / 'mae' / 'figures'}; MAE: {work / 'mae' / 'final'}")
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min) with {args.threads} threads; CPU time {cpu:.0f} s "
          f"({cpu / 60:.1f} min; budget {args.cpu_minutes:.0f}); load average at the end {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    ok = all(after[g]["val_loss"] < 0.9 * after[g]["val_baseline"] for g in after)
    print(f"held-out loss clearly below the baseline (< 0.9x) in both groups: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

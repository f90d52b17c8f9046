"""SAM 2.1 for images against the official `sam2` (1.1.0), on the same weights, in one run.

    bin/python bench/bench_sam2.py [--only encoder,boxes,amg] [--repeats N] [--threads N]

Hiera-T of the official `sam2.1_hiera_t.yaml` with random weights (the real checkpoint is not
reachable offline here; speed does not depend on the values), on samples/chelsea.jpg (451x300):

- encoder: `set_image` (both sides: preprocessing, Hiera-T, FPN neck, high-res projections);
- boxes: 64 box prompts on the image in one `predict(box=Nx4, multimask_output=False)` call (the
  reference's own batched call);
- amg: the mask generator with pred_iou_thresh=0, stability_score_thresh=0 and box_nms_thresh=1.0 (on
  random weights the defaults keep no mask, and NMS folds the near-identical masks into one) and a 10x10
  grid: 300 masks; mask counts and the share matched at IoU >= 0.99.

Each line: both timings (medians of alternated rounds, ABBA) and reference/grounded (above 1:
grounded is faster), and whether the outputs agree.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
warnings.filterwarnings("ignore", category=FutureWarning)

from bench_sam import timed_alternated  # noqa: E402  (bench/ is the script's folder)


def report(case, times, note=""):
    ref, ours = times["reference"], times["grounded"]
    print(f"{case:<60} reference {ref:8.3f} s  grounded {ours:8.3f} s  ratio {ref / ours:6.2f}x  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="encoder,boxes,amg")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))

    from PIL import Image
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as OfficialGenerator
    from sam2.sam2_image_predictor import SAM2ImagePredictor as OfficialPredictor

    from grounded.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, from_pretrained
    from sam2_reference import official_model, save_official

    import tempfile

    reference = official_model("sam2.1_hiera_t")
    with tempfile.TemporaryDirectory() as tmp:
        ours = from_pretrained(save_official(reference, Path(tmp) / "sam2.1_hiera_tiny.pt"))
    image = np.asarray(Image.open(ROOT / "samples" / "chelsea.jpg").convert("RGB")).copy()
    h, w = image.shape[:2]
    print(f"torch {torch.__version__}, {args.threads} threads, image {w}x{h}, Hiera-T (random weights)", flush=True)
    official, grounded = OfficialPredictor(reference), SAM2ImagePredictor(ours, cache_size=0)

    with torch.inference_mode():
        if "encoder" in only:
            times = timed_alternated({"reference": lambda: official.set_image(image),
                                      "grounded": lambda: grounded.set_image(image)}, args.repeats)
            error = (official.get_image_embedding() - grounded.get_image_embedding()).abs().max().item()
            report("encoder: set_image, Hiera-T", times, f"embedding max abs diff {error:.1e}")
        if "boxes" in only:
            official.set_image(image)
            grounded.set_image(image)
            rng = np.random.default_rng(0)
            x0, y0 = rng.uniform(0, w * 0.6, 64), rng.uniform(0, h * 0.6, 64)
            boxes = np.stack([x0, y0, x0 + rng.uniform(20, w * 0.4, 64), y0 + rng.uniform(20, h * 0.4, 64)], 1)
            results = {}

            def run(name, predictor):
                return lambda: results.__setitem__(name, predictor.predict(box=boxes, multimask_output=False))

            times = timed_alternated({"reference": run("reference", official), "grounded": run("grounded", grounded)},
                                     args.repeats)
            differ = (results["reference"][0] != results["grounded"][0]).mean()
            report("boxes: 64 boxes in one predict call", times, f"mask pixels differing {differ:.1e}")
        if "amg" in only:
            # Random weights give many near-identical masks, which box NMS would fold into one: it is off.
            settings = dict(points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            box_nms_thresh=1.0)
            results = {}
            times = timed_alternated({
                "reference": lambda: results.__setitem__("reference", OfficialGenerator(reference, **settings).generate(image)),
                "grounded": lambda: results.__setitem__("grounded", SAM2AutomaticMaskGenerator(ours, **settings).generate(image)),
            }, max(1, args.repeats - 2), warmup=0)
            theirs, mine = results["reference"], results["grounded"]
            a = np.stack([r["segmentation"] for r in theirs]).reshape(len(theirs), -1).astype(np.float32)
            b = np.stack([r["segmentation"] for r in mine]).reshape(len(mine), -1).astype(np.float32)
            inter = a @ b.T
            iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)
            matched = int((iou.max(1) >= 0.99).sum())
            report(f"amg: {args.points_per_side}x{args.points_per_side} grid, thresholds 0, no NMS", times,
                   f"{len(theirs)} vs {len(mine)} masks, {matched}/{len(theirs)} matched at IoU >= 0.99")


if __name__ == "__main__":
    main()

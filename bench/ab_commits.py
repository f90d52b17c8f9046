"""An older commit of grounded against this checkout, in one process, alternated round by round.

    bin/python bench/ab_commits.py                          # against 0a8064c, the four cases below, 7 rounds
    bin/python bench/ab_commits.py --rounds 5 --only boxes_64_bf16,boxes_64_no_numba,mask_clicks_16,amg_large

The old commit's tree is taken with `git archive` into a temporary folder and imported as the
package `grounded_old` (its relative imports stay inside it); this checkout is `grounded`. Each round
runs every case once per side, the order of the sides reversed every other round (ABBA), after one
warm-up round. Printed per case: the median seconds of each side, the paired median of new/old
(below 1: the new code is faster) with its range, and whether both sides gave identical masks.

Cases (CPU, torch's thread count): encoder_vit_b, ViT-B's image encoder on random weights (1x3x1024x1024);
boxes_64, 64 box prompts on astronaut 512x512 in one `predict_many` (the real MobileSAM); clicks_16,
16 single-box `predict` calls one after another (the same); amg_small, `SamAutomaticMaskGenerator`
on the stardist nuclei 512x512 with the default 32x32 grid (bench_amg.py --preset small). Both sides
run MobileSAM's encoder in PyTorch (`image_encoder_backend="torch"`; the new default, OpenVINO, is
faster and computes embeddings that differ in the last digits), so the same pixels give the same
masks. The other cases measure the paths this refactor removed: see each case's docstring.
"""

import argparse
import importlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def import_old(commit: str, folder: Path):
    """The grounded package of `commit`, imported as `grounded_old`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "grounded"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    spec = importlib.util.spec_from_file_location("grounded_old", folder / "grounded" / "__init__.py",
                                                  submodule_search_locations=[str(folder / "grounded")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["grounded_old"] = module
    spec.loader.exec_module(module)
    return module


def _load(package, name):
    return importlib.import_module(f"{package.__name__}.{name}")


def case_encoder_vit_b(package):
    import torch

    build, config = _load(package, "sam.build"), _load(package, "sam.config")
    from grounded.testing import randomize_

    model = randomize_(build.build_sam(config.OFFICIAL_CONFIGS["vit_b"]), seed=0, std=0.02)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))

    def run():
        with torch.no_grad():
            return [model.image_encoder(x).numpy()]

    return run


def _mobile_sam_predictor(package):
    from PIL import Image

    from grounded import weights

    sam = _load(package, "sam")
    predictor = sam.SamPredictor(sam.from_pretrained(weights.fetch("mobile_sam"), image_encoder_backend="torch"))
    predictor.set_image(np.asarray(Image.open(ROOT / "samples" / "astronaut.jpg").convert("RGB")))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, (64, 2))
    return predictor, np.concatenate([xy, xy + rng.uniform(20, 110, (64, 2))], axis=1)


def case_boxes_64(package):
    predictor, boxes = _mobile_sam_predictor(package)
    return lambda: [predictor.predict_many(boxes=boxes, multimask_output=True)[0]]


def case_clicks_16(package):
    predictor, boxes = _mobile_sam_predictor(package)
    return lambda: [predictor.predict(box=box, multimask_output=True)[0] for box in boxes[:16]]


def case_amg_small(package):
    import tifffile

    from grounded import weights
    from grounded.io.image import percentile_to_uint8

    sam = _load(package, "sam")
    gray = percentile_to_uint8(tifffile.imread(weights.fetch("stardist_nuclei_image")), 1, 99.8)
    image = np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    generator = _load(package, "sam.automatic").SamAutomaticMaskGenerator(
        sam.from_pretrained(weights.fetch("mobile_sam"), image_encoder_backend="torch"), points_per_side=32,
        output_mode="coco_rle")
    return lambda: [r["segmentation"]["counts"] for r in generator.generate(image)]


def case_boxes_64_bf16(package):
    """Under bf16 autocast (0a8064c: its regrouped decoder with a shared first layer; now: the core decoder)."""
    import torch

    predictor, boxes = _mobile_sam_predictor(package)
    predictor.autocast_dtype = torch.bfloat16
    return lambda: [predictor.predict_many(boxes=boxes, multimask_output=True)[0]]


def case_boxes_64_no_numba(package):
    """The tiled upscaling without numba's loops (0a8064c: oneDNN's linear with a fused GELU; now: torch
    operations); the thresholding keeps its loops on both sides."""
    predictor, boxes = _mobile_sam_predictor(package)
    if package.__name__ == "grounded_old":
        _load(package, "sam.fast_decoder")._upscaling_kernels = lambda *args: None
    else:
        from grounded.sam import cpu

        cpu.accelerate(predictor.model, paths=set(cpu.PATHS) - {"upscaling/kernels"})
    return lambda: [predictor.predict_many(boxes=boxes, multimask_output=True)[0]]


def case_mask_clicks_16(package):
    """16 single-box predict calls, each with its box's low-res logits fed back as the mask prompt
    (0a8064c: the low-rank decoder with products made for that mask; now: the regrouped decoder)."""
    predictor, boxes = _mobile_sam_predictor(package)
    fed = [predictor.predict(box=box, multimask_output=False)[2] for box in boxes[:16]]
    return lambda: [predictor.predict(box=box, mask_input=low, multimask_output=False)[0] for box, low in zip(boxes, fed)]


def case_amg_large(package):
    """The generator on chelsea at 1800x1200, a 16x16 grid (0a8064c: its cell-wise upsampler for images
    several times the model's input; now: Sam.threshold_masks)."""
    from PIL import Image

    from grounded import weights

    sam = _load(package, "sam")
    image = np.asarray(Image.open(ROOT / "samples" / "chelsea.jpg").convert("RGB").resize((1800, 1200), Image.BILINEAR))
    generator = _load(package, "sam.automatic").SamAutomaticMaskGenerator(
        sam.from_pretrained(weights.fetch("mobile_sam"), image_encoder_backend="torch"), points_per_side=16,
        output_mode="coco_rle")
    return lambda: [r["segmentation"]["counts"] for r in generator.generate(image)]


CASES = {"encoder_vit_b": case_encoder_vit_b, "boxes_64": case_boxes_64, "clicks_16": case_clicks_16,
         "amg_small": case_amg_small, "boxes_64_bf16": case_boxes_64_bf16, "boxes_64_no_numba": case_boxes_64_no_numba,
         "mask_clicks_16": case_mask_clicks_16, "amg_large": case_amg_large}
DONE_WHEN = "encoder_vit_b,boxes_64,clicks_16,amg_small"  # the cases; the others measure removed paths


def identical(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default="0a8064c", help="the older commit (default 0a8064c)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default=DONE_WHEN, help=f"comma-separated cases (default {DONE_WHEN}): " + ", ".join(CASES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import torch

    import grounded

    if args.threads:
        torch.set_num_threads(args.threads)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "grounded"], capture_output=True, text=True).stdout
    print(f"old {args.old} vs new {head}{' (+ uncommitted changes)' if dirty else ''}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.rounds} rounds, ABBA", flush=True)
    with tempfile.TemporaryDirectory(prefix="ab_commits_") as folder:
        old = import_old(args.old, Path(folder))
        for name in args.only.split(","):
            sides = {"old": CASES[name](old), "new": CASES[name](grounded)}
            outputs = {side: run() for side, run in sides.items()}  # warm-up, and the masks compared
            times = {"old": [], "new": []}
            for round_ in range(args.rounds):
                for side in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                    start = time.perf_counter()
                    sides[side]()
                    times[side].append(time.perf_counter() - start)
            ratios = sorted(n / o for n, o in zip(times["new"], times["old"]))
            print(f"{name:<14} old {statistics.median(times['old']):8.3f} s   new {statistics.median(times['new']):8.3f} s   "
                  f"paired median new/old {statistics.median(ratios):.3f} (range {ratios[0]:.3f}-{ratios[-1]:.3f})   "
                  f"masks identical: {identical(outputs['old'], outputs['new'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

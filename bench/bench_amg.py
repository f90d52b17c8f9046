"""The automatic mask generator against MobileSAM's (segment_anything's code), same weights and image.

    bin/python bench/bench_amg.py                       # both presets below
    bin/python bench/bench_amg.py --preset small        # stardist 512x512, default 32x32 grid, both sides
    bin/python bench/bench_amg.py --preset large        # 4000x3000, default grid, crop_n_layers=1
    bin/python bench/bench_amg.py --image chelsea --points-per-side 16 --min-mask-region-area 100

Each side runs in its own fresh process (after a small warm-up run), so its peak RSS (the whole
process: model, image, masks) is its own. A watchdog stops a side whose RSS passes --max-rss-gb and
says so. Prints per side: total time, encoder / decoder / everything else (upsampling, filtering,
NMS, RLE, small regions), peak RSS; then the time ratio (reference / grounded; above 1 grounded is
faster), the mask counts and how many reference masks have a partner at IoU >= 0.99.
"""

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=FutureWarning)  # timm deprecations inside mobile_sam
warnings.filterwarnings("ignore", message="Overwriting tiny_vit")

PRESETS = {
    "small": dict(image="stardist", size=None, points_per_side=32, crop_n_layers=0, side="both"),
    "large": dict(image="mosaic", size="4000x3000", points_per_side=32, crop_n_layers=1, side="both"),
}


def load_image(name, size):
    from PIL import Image

    from grounded.io.image import load_image as load, percentile_to_uint8

    if name == "stardist":
        import tifffile

        from grounded import weights

        gray = percentile_to_uint8(tifffile.imread(weights.fetch("stardist_nuclei_image")), 1, 99.8)
        image = np.repeat(gray[..., None], 3, axis=2)
    elif name == "mosaic":  # four real pictures side by side: photos and nuclei, so masks of every size
        w, h = (int(v) for v in (size or "4000x3000").split("x"))
        parts = [load_image(n, f"{w // 2}x{h // 2}") for n in ("chelsea", "astronaut", "coffee", "stardist")]
        return np.concatenate([np.concatenate(parts[:2], 1), np.concatenate(parts[2:], 1)], 0)
    elif (ROOT / "samples" / f"{name}.jpg").exists():
        image = load(ROOT / "samples" / f"{name}.jpg")
    else:
        image = load(name)
    if size:
        w, h = (int(v) for v in size.split("x"))
        image = np.array(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    return np.ascontiguousarray(image)


# ---- one side, in its own process ------------------------------------------------------------


def worker(args):
    import resource

    import torch

    from grounded import weights

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = weights.fetch("mobile_sam")
    if args.side == "ours":
        from grounded.sam import SamAutomaticMaskGenerator, from_pretrained

        model = from_pretrained(checkpoint)
    else:
        import mobile_sam
        from mobile_sam import SamAutomaticMaskGenerator

        model = mobile_sam.sam_model_registry["vit_t"](checkpoint=str(checkpoint)).eval()
    settings = dict(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                    crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area,
                    output_mode="coco_rle")
    clock = {"encoder": 0.0, "decoder": 0.0}
    _time_calls(model.image_encoder, clock, "encoder")
    _time_calls(model.prompt_encoder, clock, "decoder")
    _time_calls(model.mask_decoder, clock, "decoder")
    image = load_image(args.image, args.size)
    SamAutomaticMaskGenerator(model, points_per_side=2).generate(image[:64, :64])  # warm-up
    clock.update(encoder=0.0, decoder=0.0)
    generator = SamAutomaticMaskGenerator(model, **settings)
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    result = dict(side=args.side, total=total, encoder=clock["encoder"], decoder=clock["decoder"],
                  other=total - clock["encoder"] - clock["decoder"], masks=len(records),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  image=list(image.shape), settings=settings, threads=torch.get_num_threads(),
                  segmentations=[r["segmentation"] for r in records])
    with open(args.out, "wb") as f:
        pickle.dump(result, f)


def _time_calls(module, clock, key):
    """Add the wall time of every call of `module` to clock[key]."""
    forward = module.forward

    def timed(*a, **k):
        start = time.perf_counter()
        try:
            return forward(*a, **k)
        finally:
            clock[key] += time.perf_counter() - start

    module.forward = timed


# ---- both sides ------------------------------------------------------------------------------


def run_side(side, args):
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pkl"
        cmd = [sys.executable, __file__, "--worker", "--side", side, "--out", str(out), "--image", args.image,
               "--points-per-side", str(args.points_per_side), "--points-per-batch", str(args.points_per_batch),
               "--crop-n-layers", str(args.crop_n_layers), "--min-mask-region-area", str(args.min_mask_region_area),
               "--threads", str(args.threads or 0)] + (["--size", args.size] if args.size else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        child = subprocess.Popen(cmd, env=env)
        watch = {"peak": 0.0, "killed": False}
        threading.Thread(target=_watchdog, args=(psutil.Process(child.pid), args.max_rss_gb, watch), daemon=True).start()
        child.wait()
        if watch["killed"]:
            return dict(side=side, error=f"stopped: RSS passed {args.max_rss_gb} GB", peak_rss_mb=watch["peak"])
        if child.returncode != 0 or not out.exists():
            return dict(side=side, error=f"exit code {child.returncode}", peak_rss_mb=watch["peak"])
        with open(out, "rb") as f:
            return pickle.load(f)


def _watchdog(process, limit_gb, watch):
    while process.is_running():
        try:
            rss = process.memory_info().rss / 2**20
        except Exception:  # noqa: BLE001 - the process ended between the check and the read
            return
        watch["peak"] = max(watch["peak"], rss)
        if rss > limit_gb * 1024:
            watch["killed"] = True
            process.kill()
            return
        time.sleep(0.2)


def matched(ours, ref, threshold=0.99):
    """Reference masks with their own partner among ours (one to one) at IoU >= threshold."""
    from pycocotools import mask as mask_utils
    from scipy.optimize import linear_sum_assignment

    if not ours or not ref:
        return 0
    iou = mask_utils.iou(ours, ref, [0] * len(ref))
    rows, cols = linear_sum_assignment(-iou)
    return int((iou[rows, cols] >= threshold).sum())


def describe(r):
    if "error" in r:
        return f"{r['side']:<9} {r['error']} (peak RSS seen {r['peak_rss_mb'] / 1024:.1f} GB)"
    return (f"{r['side']:<9} {r['total']:8.1f} s  (encoder {r['encoder']:6.1f} s, decoder {r['decoder']:7.1f} s, "
            f"rest {r['other']:7.1f} s)  {r['masks']:4d} masks  peak RSS {r['peak_rss_mb'] / 1024:5.2f} GB")


def bench(args):
    sides = ["reference", "ours"] if args.side == "both" else [args.side]
    results = {side: run_side(side, args) for side in sides}
    name = f"{args.image}{' ' + args.size if args.size else ''}, points_per_side={args.points_per_side}, " \
           f"crop_n_layers={args.crop_n_layers}, min_mask_region_area={args.min_mask_region_area}"
    print(f"== {name}")
    for r in results.values():
        print("   " + describe(r), flush=True)
    ours, ref = results.get("ours"), results.get("reference")
    summary = {side: {k: v for k, v in r.items() if k != "segmentations"} for side, r in results.items()}
    if ours and ref and "error" not in ours and "error" not in ref:
        n = matched(ours["segmentations"], ref["segmentations"])
        summary["ratio"] = ref["total"] / ours["total"]
        summary["matched"] = n
        print(f"   ratio {summary['ratio']:.2f}x (reference / grounded); masks {ours['masks']} vs {ref['masks']} "
              f"({(ours['masks'] - ref['masks']) / max(ref['masks'], 1):+.1%}); {n}/{ref['masks']} reference masks "
              f"matched at IoU >= 0.99 ({n / max(ref['masks'], 1):.1%})", flush=True)
    return summary


CASE_DEFAULTS = dict(image="stardist", size=None, points_per_side=32, points_per_batch=64, crop_n_layers=0,
                     min_mask_region_area=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=[*PRESETS, "all"], default=None,
                   help="a named case (default: all presets, unless the case is given below)")
    p.add_argument("--image", default=None, help="stardist, chelsea, astronaut, coffee, mosaic or a file")
    p.add_argument("--size", default=None, help="resize to WxH (mosaic: its size, default 4000x3000)")
    p.add_argument("--points-per-side", type=int, default=None)
    p.add_argument("--points-per-batch", type=int, default=None)
    p.add_argument("--crop-n-layers", type=int, default=None)
    p.add_argument("--min-mask-region-area", type=int, default=None)
    p.add_argument("--side", choices=["both", "ours", "reference"], default=None)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-rss-gb", type=float, default=20.0, help="stop a side whose RSS passes this")
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in CASE_DEFAULTS and v is not None}
    if args.worker:
        return worker(argparse.Namespace(**{**vars(args), **CASE_DEFAULTS, **given}))
    if args.preset is None and given:
        cases = [{**CASE_DEFAULTS, "side": "both", **given}]
    else:
        names = list(PRESETS) if args.preset in (None, "all") else [args.preset]
        cases = [{**CASE_DEFAULTS, **PRESETS[n], **given} for n in names]
    summaries = []
    for case in cases:
        if args.side:
            case["side"] = args.side
        summaries.append(bench(argparse.Namespace(**{**vars(args), **case})))
    if args.json:
        Path(args.json).write_text(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=1))


if __name__ == "__main__":
    main()

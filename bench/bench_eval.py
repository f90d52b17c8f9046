"""`grounded eval` against the reference implementation: seconds per image for `points` (1 click and
20 clicks) and `proposals`, MobileSAM on the stardist nuclei (512x512, 125 objects), in one run.

    bin/python bench/bench_eval.py                                # all three cases, 2 threads
    bin/python bench/bench_eval.py --cases points1,points20 --rounds 3
    bin/python bench/bench_eval.py --points-per-side 16           # a smaller proposal grid

Each case runs the same task once per side per round, alternating (grounded, reference, grounded, ...),
each time from a cold start (no cached embedding), so the encoder is counted on both sides. Prints
the median seconds per image per side, the ratio (reference / grounded: above 1 grounded is faster)
and the headline figures of both sides, which must agree. The machine may be shared: compare only
figures from one run.
"""

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", category=FutureWarning)  # timm deprecations inside mobile_sam
warnings.filterwarnings("ignore", message="Overwriting tiny_vit")

CASES = {
    "points1": ("points", {"clicks": 1}, ("center_top", "center_oracle")),
    "points20": ("points", {"clicks": 20}, ("center_top", "mIoU@20", "NoC@85", "NoC@90")),
    "proposals": ("proposals", {}, ("AR@100", "AR@1000")),
}


def nuclei_folder(out: Path) -> Path:
    """The stardist nuclei as an instance-label folder (images/ + labels/)."""
    import tifffile
    from PIL import Image

    from grounded import weights
    from grounded.io.image import percentile_to_uint8

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    image = tifffile.imread(weights.fetch("stardist_nuclei_image"))
    Image.fromarray(percentile_to_uint8(image, 1, 99.8)).save(out / "images" / "nuclei.png")
    tifffile.imwrite(out / "labels" / "nuclei.tif", tifffile.imread(weights.fetch("stardist_nuclei_labels")))
    return out


def run_case(task, settings, dataset, segmenter, amg, workdir) -> tuple:
    from grounded.eval import Options, evaluate

    segmenter.reset()
    options = Options(bootstrap=0, amg=dict(amg), **settings)
    start = time.perf_counter()
    results = evaluate([task], dataset, [segmenter], workdir, options, progress=False)
    seconds = (time.perf_counter() - start) / len(dataset.images)
    res = results["tasks"][task]["results"][segmenter.label]
    return seconds, {k: v["value"] for k, v in res["metrics"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--rounds", type=int, default=1, help="alternated runs per side (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=32, help="proposals: the generator's grid (default 32)")
    args = parser.parse_args()

    import torch

    from grounded import weights
    from grounded.eval import load_dataset, load_segmenters

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    dataset = load_dataset([str(nuclei_folder(tmp / "nuclei"))])
    ours, reference = load_segmenters([str(weights.fetch("mobile_sam"))], reference=True)
    amg = {"points_per_side": args.points_per_side}
    print(f"MobileSAM on the stardist nuclei ({len(dataset.images)} image, 512x512, "
          f"{sum(len(i.instances) for i in dataset.images)} objects), {args.threads} threads, {args.rounds} round(s)")
    rows = []
    for name in args.cases.split(","):
        task, settings, headline = CASES[name]
        times = {"grounded": [], "reference": []}
        figures = {}
        for r in range(args.rounds):
            for side, seg in (("grounded", ours), ("reference", reference)):
                seconds, metrics = run_case(task, settings, dataset, seg, amg, tmp / f"{name}-{side}-{r}")
                times[side].append(seconds)
                figures[side] = metrics
                print(f"  {name} round {r + 1} {side}: {seconds:.2f} s/image", flush=True)
        g, ref = statistics.median(times["grounded"]), statistics.median(times["reference"])
        agree = {k: (round(figures["grounded"][k], 4), round(figures["reference"][k], 4)) for k in headline}
        rows.append((name, ref, g, agree))
    print("\n| case | reference s/image | grounded s/image | ratio | figures (grounded, reference) |")
    print("|---|---|---|---|---|")
    for name, ref, g, agree in rows:
        print(f"| {name} | {ref:.2f} | {g:.2f} | **{ref / g:.2f}x** | "
              + ", ".join(f"{k} {a} / {b}" for k, (a, b) in agree.items()) + " |")
    differences = [abs(a - b) for _, _, _, agree in rows for a, b in agree.values() if not np.isnan(a)]
    print(f"largest difference between the sides' figures: {max(differences, default=0):.2e}")


if __name__ == "__main__":
    main()

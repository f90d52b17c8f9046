"""The data engine's full proof: three rounds on the stardist nuclei with real MobileSAM and the
simulated annotator (grounded/engine/annotator.py, the `points` protocol's click rule).

    bin/python bench/engine_stardist.py                 # the proof (all nuclei, 20 steps, 3 seeds, 32x32 grid)
    bin/python bench/engine_stardist.py --short          # the CI-short variant (tests/test_engine_real.py)
    bin/python bench/engine_stardist.py --out /tmp/proj  # keep the project folder (default: a temp dir)

The 512x512 image is cut into four quadrants (grounded/testing/engine_data.py); the bottom-right one
is held out (its nuclei are the project's held-out split). Round 1: manual on the top-left quadrant,
fine-tune; round 2: semi on the top-right (the model in force pre-fills its confident masks), fine-
tune; round 3: auto on the bottom-left, scored against its nuclei with COCOeval. Printed: clicks per
mask in rounds 1 and 2, the held-out mIoU and NoC@90 of the model in force and of every seed after
each fine-tuning (95% bootstrap intervals over nuclei), the decisions, round 3's AP, and the wall
time; the project's report.md and plots are written to --out.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from finetune_stardist import load_nuclei  # noqa: E402  (after the path is set)


def run_proof(out: Path, checkpoint: str, settings: dict, log=print) -> dict:
    from grounded.testing.engine_data import run_stardist_rounds

    image, labels = load_nuclei()
    return run_stardist_rounds(image, labels, out, checkpoint, settings, log)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI-short variant: 4 nuclei per quadrant, 2 steps")
    parser.add_argument("--out", help="keep the project here (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from grounded import weights

    torch.set_num_threads(args.threads)
    from grounded.testing.engine_data import FULL, SHORT

    settings = SHORT if args.short else FULL
    start = time.time()
    with contextlib.ExitStack() as stack:
        out = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="engine_stardist_")))
        state = run_proof(out, weights.fetch("mobile_sam"), settings)
        from grounded.engine.report import round_figures
        from grounded.engine.project import Project

        project = Project.open(out / "project")
        print(f"\nsettings: {json.dumps(settings)}")
        for entry in state["rounds"]:
            figures = round_figures(project, entry)
            print(f"round {entry['index']} {entry['stage']}: {figures['masks']} masks on {figures['images']} image(s), "
                  f"clicks/mask {figures['clicks_per_mask']}, confirmed {figures['confirmed']}, corrected {figures['corrected']}")
            decision = entry.get("decision")
            if decision and decision.get("models"):
                for label, m in decision["models"].items():
                    print(f"  held-out {label}: mIoU {m['mIoU']['value']:.4f} {m['mIoU']['ci95']}, "
                          f"NoC@90 {m['NoC@90']['value']:.2f} {m['NoC@90']['ci95']}")
                print(f"  difference (seeds' mean - in force): mIoU {decision['difference']['mIoU']}, "
                      f"NoC@90 {decision['difference']['NoC@90']}; {decision['why']}; training {entry.get('train_seconds', 0):.0f} s")
            if entry.get("auto_ap"):
                print(f"  automatic masks vs truth: {entry['auto_ap']}")
        print(f"model in force at the end: {state['model']['current']}")
        auto = state["rounds"][-1]
        if auto["model"] != state["model"]["base"]:  # the auto round used a fine-tuned model: the base one beside it
            from grounded.engine.project import read_json
            from grounded.engine.rounds import auto_ap
            from grounded.engine.stages import auto_masks, load_model, segmenter_for
            from grounded.io.image import load_image

            segmenter = segmenter_for(load_model(state["model"]["base"]))
            detections = {name: [{"segmentation": r["segmentation"], "score": r["predicted_iou"]} for r in
                                 auto_masks(segmenter, load_image(project.data / name), state["stage_settings"]["auto"])]
                          for name in auto["images"]}
            base_ap = auto_ap(project, auto, read_json(out / "data" / "truth.json", "truth"), detections)
            print(f"  the base model's automatic masks on the same image, for comparison: {base_ap}")
        print(f"report: {out / 'project' / 'report.md'}")
    wall = time.time() - start
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min) with {args.threads} threads; CPU {time.process_time():.0f} s; "
          f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())

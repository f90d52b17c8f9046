"""Why a fine-tuned decoder's automatic masks vanish (issue 27): on the held-out quadrant of a proof
run (bench/engine_stardist.py --out DIR), every grid point inside a nucleus prompts each model with
the automatic generator's prompt (one point, three outputs); per output, the mean predicted IoU, true
IoU (best nucleus), stability score, and the share passing the auto stage's filters (predicted IoU
>= 0.88, stability >= 0.95).

    bin/python bench/engine_iou_scale.py DIR/data mobile_sam.pt tuned=DIR/project/rounds/001-manual/train/seed_0/final
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the proof's data folder (images/q4.png, heldout.json)")
    parser.add_argument("base", help="the base model (checkpoint or folder)")
    parser.add_argument("models", nargs="*", help="LABEL=PATH of fine-tuned models")
    parser.add_argument("--grid", type=int, default=32)
    args = parser.parse_args(argv)

    import torch

    from grounded.io.image import load_image
    from grounded.rle import decode_rle
    from grounded.sam import SamPredictor, from_pretrained
    from grounded.sam.utils.amg import build_point_grid, calculate_stability_score

    torch.set_num_threads(2)
    data = Path(args.data)
    image = load_image(data / "images" / "q4.png")
    truth = np.stack([decode_rle(a["segmentation"]) for a in json.loads((data / "heldout.json").read_text())["annotations"]]) > 0
    h, w = image.shape[:2]
    points = build_point_grid(args.grid) * np.array([w, h])
    inside = truth[:, points[:, 1].astype(int).clip(0, h - 1), points[:, 0].astype(int).clip(0, w - 1)].any(0)
    flat_truth = truth.reshape(len(truth), -1).astype(np.float32)
    for label, spec in [("base", args.base)] + [m.split("=", 1) for m in args.models]:
        predictor = SamPredictor(from_pretrained(spec, image_encoder_backend="torch").eval())
        predictor.set_image(image)
        with torch.no_grad():
            logits, scores, _ = predictor.predict_many(points[:, None], np.ones((len(points), 1), int), return_logits=True)
        stability = calculate_stability_score(torch.as_tensor(logits).flatten(0, 1), 0.0, 1.0).view(len(points), 3).numpy()
        masks = (logits > 0).reshape(len(points) * 3, -1).astype(np.float32)
        inter = masks @ flat_truth.T
        iou = (inter / np.maximum(masks.sum(1)[:, None] + flat_truth.sum(1)[None] - inter, 1)).max(1).reshape(len(points), 3)
        print(f"{label}: {inside.sum()} of {len(points)} grid points inside a nucleus")
        for k in range(3):
            s, st, t = scores[inside, k], stability[inside, k], iou[inside, k]
            print(f"  output {k}: predicted IoU {s.mean():.3f}, true IoU {t.mean():.3f}, stability {st.mean():.3f}; "
                  f"passing IoU {np.mean(s >= .88):.2f}, stability {np.mean(st >= .95):.2f}, both {np.mean((s >= .88) & (st >= .95)):.2f}")
        top = scores.argmax(1)
        print(f"  top-scoring output's true IoU {iou[np.arange(len(points)), top][inside].mean():.3f}; all points: "
              f"{int(((scores >= .88) & (stability >= .95)).sum())} outputs pass both filters")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Proof that the pipeline's COCO output is right, not merely loadable: the stardist nuclei labels
become a COCO ground truth, real MobileSAM's automatic masks go through the pipeline's COCO
writer, and pycocotools' COCOeval (segm) scores them. A copy of the predictions shifted by a few
pixels must score lower: the score measures where the masks are."""

import copy
import json

import numpy as np
from PIL import Image

from grounded.detections import decode_masks, encode_masks
from grounded.pipeline.spec import load_pipeline


def ground_truth(labels: np.ndarray, file_name: str) -> dict:
    """A COCO instance-segmentation ground truth (RLE) from an instance label image (0 = background)."""
    ids = [int(v) for v in np.unique(labels) if v != 0]
    rles = encode_masks(np.stack([labels == v for v in ids]))
    annotations = []
    for i, rle in enumerate(rles, start=1):
        mask = decode_masks([rle])[0]
        ys, xs = np.nonzero(mask)
        annotations.append({"id": i, "image_id": 1, "category_id": 1, "segmentation": rle, "area": int(mask.sum()),
                            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                            "iscrowd": 0})
    h, w = labels.shape
    return {"images": [{"id": 1, "file_name": file_name, "height": h, "width": w}],
            "annotations": annotations, "categories": [{"id": 1, "name": "nucleus"}]}


def shifted(annotations: list, dx: int, dy: int) -> list:
    """The predictions moved dx, dy pixels (masks and boxes), everything else unchanged."""
    out = []
    for ann in annotations:
        mask = decode_masks([ann["segmentation"]])[0]
        moved = np.zeros_like(mask)
        h, w = mask.shape
        moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        ann = copy.deepcopy(ann)
        ann["segmentation"] = encode_masks(moved[None])[0]
        ann["bbox"] = [ann["bbox"][0] + dx, ann["bbox"][1] + dy, ann["bbox"][2], ann["bbox"][3]]
        out.append(ann)
    return out


def evaluate(gt_path, predictions: list):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_path))
    dt = gt.loadRes(predictions)
    ev = COCOeval(gt, dt, iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[0], ev.stats[8]  # AP@[.5:.95], AR@100


def test_mobile_sam_automatic_masks_score_on_stardist_nuclei(tmp_path, stardist_nuclei, mobile_sam_checkpoint):
    import torch

    torch.set_num_threads(1)
    image, labels = stardist_nuclei
    Image.fromarray(image).save(tmp_path / "nuclei.png")
    gt_path = tmp_path / "ground_truth.json"
    gt_path.write_text(json.dumps(ground_truth(labels, "nuclei.png")))

    pipeline = load_pipeline("auto_masks", [f"model={mobile_sam_checkpoint}", "device=cpu", "points_per_side=16"])
    report = pipeline.run([str(tmp_path / "nuclei.png")], tmp_path / "out", progress=False)
    assert report.ok == 1, report.summary()

    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert coco["images"][0]["height"] == 512 and coco["images"][0]["width"] == 512
    # The writer's file is a COCO dataset; its annotations (with scores) are the detections to score.
    # One category ("object") on both sides: the nuclei are class-agnostic here.
    predictions = [dict(a, category_id=1, image_id=1) for a in coco["annotations"]]
    assert len(predictions) > 20

    ap, ar = evaluate(gt_path, predictions)
    ap_shifted, ar_shifted = evaluate(gt_path, shifted(predictions, 3, 2))
    print(f"\nMobileSAM automatic masks (16x16 grid) on 125 stardist nuclei: {len(predictions)} masks, "
          f"AP {ap:.3f}, AR@100 {ar:.3f}; shifted by (3, 2) px: AP {ap_shifted:.3f}, AR@100 {ar_shifted:.3f}")
    assert ap > 0.1
    assert ap_shifted < ap * 0.8 and ar_shifted < ar

"""The evaluation metrics against independent implementations on the same predictions: COCO mask AP
and AR against pycocotools' COCOeval, LVIS-style AP against the `lvis` package, SA-Co's cgF1 against
its official evaluator (sam3/eval/cgf1_eval.py, loaded by file path from the sam3 wheel bin/env
keeps), and the bootstrap intervals."""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from grounded.eval.cgf1 import PairScore, cgf1_figures, score_pairs
from grounded.eval.coco_metrics import (Detection, Truth, accumulate, coco_summary, evaluate_image, limit_per_image,
                                        lvis_summary)
from grounded.eval.masks import encode, rle_areas, rle_boxes
from grounded.eval.stats import mean_ci, resampled_ci
from reference import module_from_reference_wheel

COCO_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR@1", "AR@10", "AR@100",
              "AR_small@100", "AR_medium@100", "AR_large@100"]


def blob(rng, h, w, size):
    """A random ellipse or rectangle of about `size` pixels across."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(size / 2, [h - size / 2, w - size / 2])
    ry, rx = size / 2 * rng.uniform(0.6, 1.0, 2)
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)


def shifted(mask, dy, dx):
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def synthetic_set(seed=0, n_images=10, n_cats=3, crowd=True):
    """GT masks of all sizes (some crowd) and predictions: shifted copies (IoU above and below 0.5),
    duplicates, false positives, random scores (a few ties)."""
    rng = np.random.default_rng(seed)
    images, gts, dts = [], [], []
    for img_id in range(1, n_images + 1):
        h, w = 160, 200
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.png"})
        for _ in range(int(rng.integers(2, 7))):
            size = float(rng.choice([14, 40, 150]))
            mask = blob(rng, h, w, size)
            cat = int(rng.integers(1, n_cats + 1))
            is_crowd = crowd and rng.random() < 0.08
            gts.append((img_id, cat, mask, is_crowd))
            for _ in range(int(rng.integers(0, 3))):
                d = int(rng.integers(0, max(2, int(size * 0.3))))
                wrong = rng.random() < 0.1
                dts.append((img_id, int(rng.integers(1, n_cats + 1)) if wrong else cat,
                            shifted(mask, d * int(rng.choice([-1, 1])), int(rng.integers(-2, 3))), round(float(rng.random()), 2)))
        for _ in range(int(rng.integers(0, 4))):
            dts.append((img_id, int(rng.integers(1, n_cats + 1)), blob(rng, h, w, float(rng.choice([10, 30, 80]))),
                        round(float(rng.random()), 2)))
    return images, gts, dts


def coco_files(images, gts, dts, n_cats=3):
    annotations = []
    for k, (img_id, cat, mask, is_crowd) in enumerate(gts, start=1):
        rle = encode(mask[None])[0]
        annotations.append({"id": k, "image_id": img_id, "category_id": cat, "segmentation": rle, "iscrowd": int(is_crowd),
                            "area": float(rle_areas([rle])[0]), "bbox": rle_boxes([rle])[0].tolist()})
    gt_doc = {"images": images, "annotations": annotations, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)]}
    results = [{"image_id": i, "category_id": c, "segmentation": encode(m[None])[0], "score": s} for i, c, m, s in dts]
    return gt_doc, results


def ours(images, gts, dts, categories, use_cats=True, max_dets=(1, 10, 100)):
    per_image = []
    for im in images:
        t = [Truth(encode(m[None])[0], float(m.sum()), c, crowd=cr) for i, c, m, cr in gts if i == im["id"]]
        d = [Detection(encode(m[None])[0], s, c) for i, c, m, s in dts if i == im["id"]]
        per_image.append(evaluate_image(d, t, categories, max(max_dets), use_cats=use_cats))
    return accumulate(per_image, categories if use_cats else [-1], max_dets)


def cocoeval(gt_doc, results, use_cats=True, max_dets=(1, 10, 100)):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO()
    gt.dataset = copy.deepcopy(gt_doc)
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="segm")
    ev.params.useCats = int(use_cats)
    ev.params.maxDets = list(max_dets)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_mask_ap_and_ar_equal_cocoeval(seed):
    images, gts, dts = synthetic_set(seed)
    assert any(cr for *_, cr in gts), "the set has crowd regions"
    gt_doc, results = coco_files(images, gts, dts)
    ev = cocoeval(gt_doc, results)
    acc = ours(images, gts, dts, [1, 2, 3])
    mine = coco_summary(acc, [1, 2, 3])
    for k, name in enumerate(COCO_NAMES):
        assert mine[name] == pytest.approx(ev.stats[k], abs=1e-6), name
    # Every precision and recall entry, not only the means.
    for (cat, area, m), prec in acc.precision.items():
        ci, ai, mi = [1, 2, 3].index(cat), ["all", "small", "medium", "large"].index(area), [1, 10, 100].index(m)
        np.testing.assert_allclose(prec, ev.eval["precision"][:, :, ci, ai, mi], atol=1e-9)
        np.testing.assert_allclose(acc.recall[cat, area, m], ev.eval["recall"][:, ci, ai, mi], atol=1e-9)
    assert 0.05 < mine["AP"] < 0.95  # neither trivial nor perfect
    assert min(mine["AP_small"], mine["AP_medium"], mine["AP_large"]) > 0  # every size range has objects


def test_class_agnostic_proposal_recall_equals_cocoeval_use_cats_0():
    images, gts, dts = synthetic_set(3, n_images=8)
    rng = np.random.default_rng(5)
    # Proposals: many masks per image, more than the smallest maxDets.
    extra = [(im["id"], 1, blob(rng, 160, 200, float(rng.choice([12, 40, 100]))), float(rng.random())) for im in images for _ in range(25)]
    dts = dts + extra
    gt_doc, results = coco_files(images, gts, dts)
    ev = cocoeval(gt_doc, results, use_cats=False, max_dets=(10, 100, 1000))
    acc = ours(images, gts, dts, [1, 2, 3], use_cats=False, max_dets=(10, 100, 1000))
    for k, (area, m) in enumerate([("all", 10), ("all", 100), ("all", 1000), ("small", 1000), ("medium", 1000), ("large", 1000)]):
        expected = ev.stats[6 + k]
        assert np.mean(acc.recall[-1, area, m]) == pytest.approx(expected, abs=1e-6), (area, m)


def test_per_object_recall_of_the_proposals_task_equals_cocoeval():
    """The proposals task stores, per ground-truth object, which proposal matched it; averaging those
    gives COCOeval's AR (its bootstrap unit is the object)."""
    from grounded.eval.coco_metrics import Match
    from grounded.eval.tasks.proposals import recall_per_object

    images, gts, dts = synthetic_set(4, n_images=6)
    gt_doc, results = coco_files(images, gts, dts)
    ev = cocoeval(gt_doc, results, use_cats=False, max_dets=(10, 100, 1000))
    records = []
    for im in images:
        t = [Truth(encode(m[None])[0], float(m.sum()), c, crowd=cr) for i, c, m, cr in gts if i == im["id"]]
        d = [Detection(encode(m[None])[0], s, 1) for i, c, m, s in dts if i == im["id"]]
        matches = evaluate_image(d, t, [1, 2, 3], 1000, use_cats=False)
        records.append((im, {"matches": {a: (m or Match.empty()).to_json() for (_, a), m in matches.items()}}))
    for k, (area, m) in enumerate([("all", 10), ("all", 100), ("all", 1000), ("small", 1000), ("medium", 1000), ("large", 1000)]):
        per_object = recall_per_object(records, area, m)
        assert np.mean(per_object) == pytest.approx(ev.stats[6 + k], abs=1e-6), (area, m)


@pytest.fixture
def lvis_module(monkeypatch):
    """The lvis package (0.5.3 uses np.float, gone from numpy 2: shimmed here only, for this test)."""
    monkeypatch.setattr(np, "float", float, raising=False)
    import lvis

    return lvis


def test_lvis_style_ap_equals_the_lvis_package(lvis_module, tmp_path):
    images, gts, dts = synthetic_set(2, n_images=10, crowd=False)
    rng = np.random.default_rng(11)
    gt_doc, results = coco_files(images, gts, dts)
    for im in gt_doc["images"]:
        present = sorted({a["category_id"] for a in gt_doc["annotations"] if a["image_id"] == im["id"]})
        absent = [c for c in (1, 2, 3) if c not in present]
        im["neg_category_ids"] = absent[: int(rng.integers(0, len(absent) + 1))]
        im["not_exhaustive_category_ids"] = present[:1] if rng.random() < 0.4 else []
    gt_doc["categories"] = [dict(c, frequency=f) for c, f in zip(gt_doc["categories"], "rcf")]
    (tmp_path / "gt.json").write_text(json.dumps(gt_doc))
    ev = lvis_module.LVISEval(str(tmp_path / "gt.json"), copy.deepcopy(results), "segm")
    ev.run()

    per_image = []
    for im in gt_doc["images"]:
        t = [Truth(encode(m[None])[0], float(m.sum()), c) for i, c, m, cr in gts if i == im["id"]]
        d = limit_per_image([Detection(encode(m[None])[0], s, c) for i, c, m, s in dts if i == im["id"]], 300)
        cats = sorted({x.category for x in t} | set(im["neg_category_ids"]))
        d = [x for x in d if x.category in cats]
        per_image.append(evaluate_image(d, t, cats, 300, not_exhaustive=im["not_exhaustive_category_ids"]))
    acc = accumulate(per_image, [1, 2, 3], (300,))
    mine = lvis_summary(acc, [1, 2, 3], {1: "r", 2: "c", 3: "f"}, 300)
    names = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "AP_small": "APs", "AP_medium": "APm", "AP_large": "APl",
             "APr": "APr", "APc": "APc", "APf": "APf", "AR@300": "AR@300", "AR_small@300": "ARs@300",
             "AR_medium@300": "ARm@300", "AR_large@300": "ARl@300"}
    for ours_name, theirs in names.items():
        assert mine[ours_name] == pytest.approx(float(ev.results[theirs]), abs=1e-6), ours_name
    assert 0.05 < mine["AP"] < 0.95


# ---- cgF1 against SA-Co's evaluator -------------------------------------------------------------

SAM3_WHEEL = Path(sys.prefix) / "reference-wheels" / "sam3-0.1.4-py3-none-any.whl"


@pytest.fixture(scope="module")
def official_cgf1(tmp_path_factory):
    """sam3/eval/cgf1_eval.py, loaded by file path from the wheel bin/env keeps in the environment."""
    return module_from_reference_wheel(SAM3_WHEEL.name, "sam3/eval/cgf1_eval.py", tmp_path_factory.mktemp("sam3_eval"))


def saco_pairs(seed=0, n_pairs=30, annotators=3):
    """Image-phrase pairs with 0-4 objects, annotators that disagree a little, predictions that are
    good, shifted (IoU below 0.5), missing or spurious, scores above and below 0.5."""
    rng = np.random.default_rng(seed)
    pairs = []
    for pid in range(1, n_pairs + 1):
        h, w = 64, 80
        objects = [blob(rng, h, w, float(rng.choice([10, 18, 30]))) for _ in range(int(rng.choice([0, 0, 1, 2, 3, 4])))]
        annots = []
        for _ in range(annotators):
            kept = [o for o in objects if rng.random() > 0.1]
            annots.append([shifted(o, int(rng.integers(-1, 2)), 0) for o in kept])
        preds = []
        for o in objects:
            if rng.random() < 0.8:
                preds.append((shifted(o, int(rng.integers(-6, 7)), int(rng.integers(-3, 4))), float(rng.uniform(0.2, 1))))
        for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):
            preds.append((blob(rng, h, w, 12.0), float(rng.uniform(0, 1))))
        exhaustive = [bool(rng.random() > 0.1) for _ in range(annotators)]
        pairs.append({"id": pid, "h": h, "w": w, "annotations": annots, "predictions": preds, "exhaustive": exhaustive})
    return pairs


def write_saco(pairs, folder):
    paths = []
    for a in range(len(pairs[0]["annotations"])):
        images, anns = [], []
        for p in pairs:
            images.append({"id": p["id"], "file_name": f"{p['id']}.jpg", "height": p["h"], "width": p["w"],
                           "text_input": f"phrase {p['id']}", "is_instance_exhaustive": p["exhaustive"][a]})
            for m in p["annotations"][a]:
                rle = encode(m[None])[0]
                anns.append({"id": len(anns) + 1, "image_id": p["id"], "category_id": 1, "segmentation": rle, "iscrowd": 0,
                             "area": float(m.sum()), "bbox": rle_boxes([rle])[0].tolist()})
        path = folder / f"gt_{a}.json"
        path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}))
        paths.append(str(path))
    preds = [{"image_id": p["id"], "category_id": 1, "segmentation": encode(m[None])[0], "score": s,
              "bbox": rle_boxes(encode(m[None]))[0].tolist()} for p in pairs for m, s in p["predictions"]]
    (folder / "pred.json").write_text(json.dumps(preds))
    return paths, str(folder / "pred.json")


@pytest.mark.parametrize("seed,annotators", [(0, 3), (1, 1), (2, 3)])
def test_cgf1_equals_the_official_sa_co_evaluator(official_cgf1, tmp_path, seed, annotators):
    pairs = saco_pairs(seed, annotators=annotators)
    gt_paths, pred_path = write_saco(pairs, tmp_path)
    theirs = official_cgf1.CGF1Evaluator(gt_paths).evaluate(pred_path)

    used = [p for p in pairs if all(p["exhaustive"])]
    assert len(used) >= 20
    predictions = [[encode(m[None])[0] for m, s in p["predictions"] if s >= 0.5] for p in used]
    annotations = [[[encode(m[None])[0] for m in a] for a in p["annotations"]] for p in used]
    scores = score_pairs(predictions, annotations)
    kinds = {s.il for s in scores}
    assert kinds == {"TP", "FP", "FN", "TN"}, kinds  # positives, negatives, misses and spurious pairs
    mine = cgf1_figures(scores)
    prefix = "cgF1_eval_segm_"
    for ours_name, theirs_name in [("cgF1", "cgF1"), ("IL_MCC", "IL_MCC"), ("pmF1", "positive_micro_F1"),
                                   ("cgF1@0.5", "cgF1@0.5"), ("cgF1@0.75", "cgF1@0.75"), ("F1", "F1"),
                                   ("positive_macro_F1", "positive_macro_F1"), ("IL_F1", "IL_F1"), ("IL_FPR", "IL_FPR"),
                                   ("precision", "precision"), ("recall", "recall")]:
        assert mine[ours_name] == pytest.approx(theirs[prefix + theirs_name], abs=1e-9), ours_name
    # Matched IoUs fall on both sides of 0.5, so the thresholds matter.
    tp = np.array([s.tp for s in scores if s.tp is not None])
    assert tp[:, 0].sum() > tp[:, -1].sum()


def test_pair_score_round_trips_through_json():
    pairs = saco_pairs(4, n_pairs=8, annotators=2)
    for p in pairs:
        s = score_pairs([[encode(m[None])[0] for m, sc in p["predictions"]]], [[[encode(m[None])[0] for m in a] for a in p["annotations"]]])[0]
        back = PairScore.from_json(json.loads(json.dumps(s.to_json())))
        assert back.il == s.il and back.n_dt == s.n_dt
        if s.tp is not None:
            np.testing.assert_array_equal(back.tp, s.tp)
            np.testing.assert_allclose(back.local_f1, s.local_f1)


# ---- bootstrap --------------------------------------------------------------------------------------

def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small = mean_ci(rng.normal(0.6, 0.2, 20), rounds=500, seed=1)
    large = mean_ci(rng.normal(0.6, 0.2, 2000), rounds=500, seed=1)
    assert small.low < small.value < small.high and large.low < large.value < large.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    # Normal theory: the 95% half-width of a mean of 2000 draws with sd 0.2 is about 0.0088.
    assert (large.high - large.low) / 2 == pytest.approx(1.96 * 0.2 / np.sqrt(2000), rel=0.2)
    again = mean_ci(rng.normal(0.6, 0.2, 20), rounds=500, seed=1)
    assert mean_ci([1.0, 2.0, 3.0], 200, 3).low == mean_ci([1.0, 2.0, 3.0], 200, 3).low and again.n == 20
    assert mean_ci([0.5], 100).low is None and np.isnan(mean_ci([], 100).value)


def test_resampled_interval_of_a_ratio():
    hits = np.array([1] * 30 + [0] * 70)
    stat = resampled_ci(len(hits), lambda idx: hits[idx].mean(), rounds=400, seed=0)
    assert stat.value == pytest.approx(0.3) and stat.low < 0.3 < stat.high and stat.over == "images"

"""`grounded eval` with the real MobileSAM on real data, side by side with the reference (mobile_sam on
the same weights): the stardist nuclei (125 instances) and the synthetic shapes with jittered boxes."""

import copy
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from grounded.eval import Options, evaluate, load_dataset, load_segmenters
from make_eval_data import write_all

# Pinned: MobileSAM's single-point mIoU on the 125 stardist nuclei (tests/test_sam_real.py measures
# the same figures through the predictor directly).
CENTER_TOP, CENTER_ORACLE = 0.6091, 0.7084


@pytest.fixture(scope="module")
def nuclei_folder(tmp_path_factory, stardist_nuclei):
    """The nuclei as an instance-label folder: images/nuclei.png (the fixture's uint8 pixels) and
    labels/nuclei.tif; and a 160x160 crop of it (the upper left corner)."""
    image, labels = stardist_nuclei
    folders = {}
    for name, window in (("full", np.s_[:, :]), ("crop", np.s_[:160, :160])):
        folder = tmp_path_factory.mktemp(f"nuclei_{name}")
        (folder / "images").mkdir()
        (folder / "labels").mkdir()
        Image.fromarray(image[window][..., 0]).save(folder / "images" / "nuclei.png")
        tifffile.imwrite(folder / "labels" / "nuclei.tif", labels[window])
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def mobile_sam_with_reference(mobile_sam_checkpoint):
    return load_segmenters([str(mobile_sam_checkpoint)], reference=True)


def test_stardist_points_pinned_and_equal_to_the_reference(nuclei_folder, mobile_sam_with_reference, tmp_path):
    ds = load_dataset([str(nuclei_folder["full"])])
    assert sum(len(i.instances) for i in ds.images) == 125
    results = evaluate(["points"], ds, mobile_sam_with_reference, tmp_path, Options(clicks=1, bootstrap=200),
                       progress=False)
    res = results["tasks"]["points"]["results"]
    ours, ref = res["mobile_sam"]["metrics"], res["mobile_sam (reference)"]["metrics"]
    print({k: (ours[k]["value"], ref[k]["value"]) for k in ("center_top", "center_oracle", "random_top", "random_oracle")})
    assert ours["center_top"]["value"] == pytest.approx(CENTER_TOP, abs=5e-5)
    assert ours["center_oracle"]["value"] == pytest.approx(CENTER_ORACLE, abs=5e-5)
    for name in ("center_top", "center_oracle", "random_top", "random_oracle"):
        assert abs(ours[name]["value"] - ref[name]["value"]) < 1e-3, name
        assert ours[name]["n"] == 125
    lo, hi = ours["center_top"]["ci95"]
    assert lo < CENTER_TOP < hi and hi - lo < 0.15
    assert max(abs(v) for v in results["tasks"]["points"]["differences"]["mobile_sam"].values()) < 1e-3


def test_interactive_clicks_equal_the_reference_on_a_crop(nuclei_folder, mobile_sam_with_reference, tmp_path):
    ds = load_dataset([str(nuclei_folder["crop"])])
    assert 8 <= sum(len(i.instances) for i in ds.images) <= 30
    results = evaluate(["points"], ds, mobile_sam_with_reference, tmp_path, Options(clicks=5, bootstrap=0), progress=False)
    lines = {}
    for label in ("mobile_sam", "mobile_sam (reference)"):
        from grounded.eval.tasks.base import slug

        record = json.loads((tmp_path / "records" / "points" / f"{slug(label)}.jsonl").read_text().splitlines()[0])
        lines[label] = np.array([o["clicks"] for o in record["record"]["objects"]])
    ours, ref = lines["mobile_sam"], lines["mobile_sam (reference)"]
    # The same clicks land in the same places when the masks agree: per-click mIoU within 1e-3.
    np.testing.assert_allclose(ours.mean(axis=0), ref.mean(axis=0), atol=1e-3)
    assert ours.mean(axis=0)[-1] > ours.mean(axis=0)[0] + 0.1  # corrections help a real model
    res = results["tasks"]["points"]["results"]
    assert res["mobile_sam"]["metrics"]["NoC@85"]["value"] == pytest.approx(
        res["mobile_sam (reference)"]["metrics"]["NoC@85"]["value"], abs=0.1)


@pytest.mark.slow
def test_stardist_twenty_clicks_with_the_plot(nuclei_folder, mobile_sam_with_reference, tmp_path):
    ds = load_dataset([str(nuclei_folder["full"])])
    results = evaluate(["points"], ds, mobile_sam_with_reference, tmp_path, Options(clicks=20), progress=False)
    res = results["tasks"]["points"]["results"]
    ours = [p["value"] for p in res["mobile_sam"]["curves"]["miou_per_click"]]
    ref = [p["value"] for p in res["mobile_sam (reference)"]["curves"]["miou_per_click"]]
    print("mIoU per click", np.round(ours, 4).tolist(), "reference", np.round(ref, 4).tolist())
    assert ours[0] == pytest.approx(CENTER_TOP, abs=5e-5)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    assert ours[-1] > 0.85
    assert (tmp_path / "points_miou_per_click.png").stat().st_size > 10000


def test_instances_from_jittered_boxes_equal_cocoeval_and_lvis(mobile_sam_checkpoint, tmp_path, monkeypatch):
    """The instances proof: ground-truth boxes jittered by a seed, prompted to the real MobileSAM;
    AP from the written masks by pycocotools and by the lvis package equals ours."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = write_all(tmp_path / "data", n=3)  # two scenes of small and medium shapes, one large shape
    segmenters = load_segmenters([str(mobile_sam_checkpoint)])
    segmenters[0].predictor.cache_size = 8  # both runs below see the same three images
    coco = evaluate(["instances"], load_dataset([str(data["coco"])]), segmenters, tmp_path / "coco",
                    Options(detections=str(data["detections"]), bootstrap=100), progress=False)["tasks"]["instances"]
    written = json.loads((tmp_path / "coco" / coco["predictions"]["mobile_sam"]).read_text())
    gt = COCO(str(data["coco"]))
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(written)), iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    m = coco["results"]["mobile_sam"]["metrics"]
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR@1", "AR@10", "AR@100",
             "AR_small@100", "AR_medium@100", "AR_large@100"]
    for k, name in enumerate(names):
        assert m[name]["value"] == pytest.approx(ev.stats[k], abs=1e-6), name
    print("MobileSAM masks from jittered boxes, COCO AP", m["AP"])
    assert m["AP"]["value"] > 0.5  # real masks of easy shapes from nearly right boxes

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float (numpy < 2)
    import lvis

    lv = evaluate(["instances"], load_dataset([str(data["lvis"])]), segmenters, tmp_path / "lvis",
                  Options(detections=str(data["detections"]), bootstrap=0), progress=False)["tasks"]["instances"]
    written = json.loads((tmp_path / "lvis" / lv["predictions"]["mobile_sam"]).read_text())
    ev = lvis.LVISEval(str(data["lvis"]), copy.deepcopy(written), "segm")
    ev.run()
    m = lv["results"]["mobile_sam"]["metrics"]
    for ours, theirs in [("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("APr", "APr"), ("APc", "APc"),
                         ("APf", "APf"), ("AP_small", "APs"), ("AP_medium", "APm"), ("AP_large", "APl"), ("AR@300", "AR@300")]:
        assert m[ours]["value"] == pytest.approx(float(ev.results[theirs]), abs=1e-6), ours


@pytest.mark.slow
def test_vit_reference_is_segment_anything_on_the_same_weights(tmp_path):
    """--reference for a ViT model: segment_anything's vit_b loaded with the same (random) weights."""
    import torch

    from grounded.sam import build_sam_vit_b, save_pretrained
    from grounded.testing import randomize_

    torch.manual_seed(0)
    save_pretrained(randomize_(build_sam_vit_b(), seed=1, std=0.02).eval(), tmp_path / "vit_b")
    data = write_all(tmp_path / "data", n=1)
    segmenters = load_segmenters([str(tmp_path / "vit_b")], reference=True)
    assert type(segmenters[1].model).__module__.startswith("segment_anything")
    results = evaluate(["points", "boxes"], load_dataset([str(data["labels"])]), segmenters, tmp_path / "out",
                       Options(clicks=2, bootstrap=0), progress=False)
    for task in ("points", "boxes"):
        diffs = results["tasks"][task]["differences"]["vit_b"]
        assert max(abs(v) for v in diffs.values()) < 1e-3, (task, diffs)


@pytest.mark.slow
def test_text_modes_offline_with_the_tiny_models(tmp_path, mobile_sam_checkpoint):
    """All three text modes on the synthetic SA-Co files with the real MobileSAM, the tiny CLIP trained
    on shapes, a random projection and a tiny random Grounding DINO (what runs offline)."""
    from grounded.sam.text_prompt import TextPromptProjection
    from grounded.testing.clip import tiny_trained_clip
    from grounded.testing.dino import tiny_hf

    data = write_all(tmp_path / "data", n=3)
    clip_dir = tiny_trained_clip(tmp_path / "clip")
    projection = TextPromptProjection(clip_dim=32, prompt_embed_dim=256).save_pretrained(tmp_path / "projection")
    detector = tiny_hf(tmp_path / "dino")
    gold = load_dataset([str(p) for p in data["saco"]])
    results = evaluate(["text"], gold, load_segmenters([str(mobile_sam_checkpoint)]), tmp_path / "out",
                       Options(modes=["grounded", "clip", "native"], clip=str(clip_dir), projection=str(projection),
                               detector=str(detector), amg={"points_per_side": 16},
                               score_threshold={"clip": 0.3}, bootstrap=100), progress=False)
    res = results["tasks"]["text"]["results"]
    print({k: {m: round(v["metrics"][m]["value"], 4) for m in ("cgF1", "IL_MCC", "pmF1", "mIoU")} for k, v in res.items()})
    assert set(res) == {"mobile_sam / grounded", "mobile_sam / clip", "mobile_sam / native"}
    assert results["errors"]["count"] == 0
    # The trained CLIP names colours and shapes: its best masks match the phrase's shape.
    assert res["mobile_sam / clip"]["metrics"]["mIoU"]["value"] > 0.3

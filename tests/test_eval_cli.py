"""`grounded eval` end to end on the synthetic data sets (tests/make_eval_data.py) with a tiny random
SAM: every task writes results.json (with intervals), results.md and its plots; embeddings are
reused across tasks and models of the same weights; a run resumes; the prediction files score the
same under pycocotools; text modes plug in; bad input gets a clear error or a counted skip."""

import copy
import json
import shutil

import numpy as np
import pytest

from grounded.cli import main
from grounded.eval import Options, Selection, evaluate, load_dataset, load_segmenters
from make_eval_data import write_all

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory):
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    base = tmp_path_factory.mktemp("models")
    folder, copy_dir = base / "tiny_sam", base / "tiny_sam_copy"
    save_pretrained(tiny_sam("vit", seed=3), folder)
    shutil.copytree(folder, copy_dir)
    return str(folder), str(copy_dir)


def count_encodes(segmenters):
    calls = []
    for model in {id(s.predictor.model): s.predictor.model for s in segmenters}.values():
        model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_points_and_boxes_share_embeddings_and_resume(data, tiny_sam_dir, tmp_path):
    sam, same_weights = tiny_sam_dir
    segmenters = load_segmenters([sam, same_weights])
    assert segmenters[0].predictor is segmenters[1].predictor  # same weights: one predictor
    assert segmenters[0].label != segmenters[1].label
    encodes = count_encodes(segmenters)
    out = tmp_path / "run"
    options = Options(clicks=3, bootstrap=50)
    half = load_dataset([str(data["labels_tif"])], selection=Selection(limit=3))
    evaluate(["points", "boxes"], half, segmenters, out, options, progress=False)
    assert len(encodes) == 3  # 3 images, 2 tasks, 2 models: each image encoded once
    first_lines = (out / "records" / "points" / "tiny_sam.jsonl").read_text().splitlines()
    with pytest.raises(ValueError, match="already holds an evaluation"):
        evaluate(["points", "boxes"], half, segmenters, out, options, progress=False)
    full = load_dataset([str(data["labels_tif"])])
    with pytest.raises(ValueError, match="differ from the run"):
        evaluate(["points", "boxes"], full, segmenters, out, Options(clicks=4, bootstrap=50), resume=True, progress=False)
    results = evaluate(["points", "boxes"], full, segmenters, out, options, resume=True, progress=False)
    assert len(encodes) == 6  # only the 3 new images
    lines = (out / "records" / "points" / "tiny_sam.jsonl").read_text().splitlines()
    assert lines[:3] == first_lines and len(lines) == 6
    points = results["tasks"]["points"]["results"]["tiny_sam"]
    n_objects = sum(len(i.instances) for i in full.images)
    assert points["metrics"]["center_top"]["n"] == n_objects and points["images"] == 6
    assert len(points["curves"]["miou_per_click"]) == 3
    stat = points["metrics"]["center_oracle"]
    assert stat["ci95"][0] <= stat["value"] <= stat["ci95"][1]
    # Same weights, same figures.
    other = results["tasks"]["points"]["results"]["tiny_sam_copy"]
    assert other["metrics"]["center_top"]["value"] == points["metrics"]["center_top"]["value"]
    assert (out / "points_miou_per_click.png").stat().st_size > 5000
    assert (out / "boxes_miou_by_area.png").is_file()
    md = (out / "results.md").read_text()
    assert "| tiny_sam |" in md and "NoC@85" in md and "mIoU_small" in md
    assert json.loads((out / "results.json").read_text())["errors"]["count"] == 0


def test_a_killed_run_keeps_finished_images(data, tiny_sam_dir, tmp_path):
    """A line cut short by a kill is ignored and the image done again; the journal stays valid."""
    sam, _ = tiny_sam_dir
    segmenters = load_segmenters([sam])
    ds = load_dataset([str(data["coco"])], selection=Selection(limit=2))
    out = tmp_path / "run"
    evaluate(["boxes"], ds, segmenters, out, Options(bootstrap=0), progress=False)
    path = out / "records" / "boxes" / "tiny_sam.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed while writing image 2
    results = evaluate(["boxes"], ds, segmenters, out, Options(bootstrap=0), resume=True, progress=False)
    assert results["tasks"]["boxes"]["results"]["tiny_sam"]["images"] == 2
    good = [json.loads(t) for t in path.read_text().splitlines()[:1] + path.read_text().splitlines()[2:]]
    assert [g["image"] for g in good] == [ds.images[0].name, ds.images[1].name]


def cocoeval_stats(gt_path, results, use_cats=True, max_dets=(1, 10, 100), img_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(str(gt_path))
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iouType="segm")
    ev.params.useCats = int(use_cats)
    ev.params.maxDets = list(max_dets)
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_proposals_recall_equals_cocoeval_on_the_written_proposals(data, tiny_sam_dir, tmp_path):
    sam, _ = tiny_sam_dir
    out = tmp_path / "props"
    code = main(["eval", "proposals", "--data", str(data["coco"]), "--model", sam, "--out", str(out), "--limit", "3",
                 "--amg", "points_per_side=6", "pred_iou_thresh=0", "stability_score_thresh=0", "box_nms_thresh=0.95",
                 "--max-proposals", "40", "--bootstrap", "20", "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    task = results["tasks"]["proposals"]
    written = json.loads((out / task["predictions"]["tiny_sam"]).read_text())
    assert 10 < len(written) <= 3 * 40
    stats = cocoeval_stats(data["coco"], written, use_cats=False, max_dets=(10, 100, 1000), img_ids=[1, 2, 3])
    m = task["results"]["tiny_sam"]["metrics"]
    for k, name in enumerate(["AR@10", "AR@100", "AR@1000", "AR_small@1000", "AR_medium@1000", "AR_large@1000"]):
        assert m[name]["value"] == pytest.approx(max(stats[6 + k], -1), abs=1e-6) or (np.isnan(m[name]["value"]) and stats[6 + k] == -1), name
    assert (out / "proposals_recall_vs_iou.png").is_file()


def test_instances_ap_equals_cocoeval_and_lvis_on_jittered_boxes(data, tiny_sam_dir, tmp_path):
    """The instances proof's wiring on a tiny SAM (real masks: tests/test_eval_real.py)."""
    sam, _ = tiny_sam_dir
    segmenters = load_segmenters([sam])
    coco = load_dataset([str(data["coco"])])
    results = evaluate(["instances"], coco, segmenters, tmp_path / "coco",
                       Options(detections=str(data["detections"]), bootstrap=20), progress=False)
    task = results["tasks"]["instances"]
    written = json.loads((tmp_path / "coco" / task["predictions"]["tiny_sam"]).read_text())
    stats = cocoeval_stats(data["coco"], written)
    names = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR@1", "AR@10", "AR@100",
             "AR_small@100", "AR_medium@100", "AR_large@100"]
    m = task["results"]["tiny_sam"]["metrics"]
    for k, name in enumerate(names):
        assert m[name]["value"] == pytest.approx(stats[k], abs=1e-6), name
    assert task["results"]["tiny_sam"]["extra"]["evaluator"] == "COCOeval"


def test_instances_on_an_lvis_file_equal_the_lvis_package(data, tiny_sam_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float (numpy < 2)
    import lvis

    sam, _ = tiny_sam_dir
    ds = load_dataset([str(data["lvis"])])
    results = evaluate(["instances"], ds, load_segmenters([sam]), tmp_path / "lvis",
                       Options(detections=str(data["detections"]), bootstrap=0), progress=False)
    task = results["tasks"]["instances"]
    written = json.loads((tmp_path / "lvis" / task["predictions"]["tiny_sam"]).read_text())
    ev = lvis.LVISEval(str(data["lvis"]), copy.deepcopy(written), "segm")
    ev.run()
    m = task["results"]["tiny_sam"]["metrics"]
    for ours, theirs in [("AP", "AP"), ("AP50", "AP50"), ("APr", "APr"), ("APc", "APc"), ("APf", "APf"),
                         ("AP_small", "APs"), ("AR@300", "AR@300")]:
        assert m[ours]["value"] == pytest.approx(float(ev.results[theirs]), abs=1e-6), ours
    assert task["results"]["tiny_sam"]["extra"]["evaluator"] == "LVISEval"


def test_detections_files_with_foreign_ids(data, tiny_sam_dir, tmp_path):
    sam, _ = tiny_sam_dir
    detections = json.loads(data["detections"].read_text())
    foreign = [dict(d, image_id=d["image_id"] + 1000) for d in detections[:5]]
    (tmp_path / "mixed.json").write_text(json.dumps(detections + foreign))
    coco = load_dataset([str(data["coco"])], selection=Selection(limit=2))
    results = evaluate(["instances"], coco, load_segmenters([sam]), tmp_path / "mixed",
                       Options(detections=str(tmp_path / "mixed.json"), bootstrap=0), progress=False)
    skipped = results["tasks"]["instances"]["results"]["tiny_sam"]["extra"]["detections_skipped"]
    assert skipped["unknown image id"] == 5 + sum(1 for d in detections if d["image_id"] > 2)
    (tmp_path / "foreign.json").write_text(json.dumps(foreign))
    code = main(["eval", "instances", "--data", str(data["coco"]), "--model", sam, "--detections",
                 str(tmp_path / "foreign.json"), "--out", str(tmp_path / "f"), "--no-progress"])
    assert code == 1
    code = main(["eval", "instances", "--data", str(data["coco"]), "--model", sam, "--out", str(tmp_path / "g"), "--no-progress"])
    assert code == 1


def test_edges_on_bsds_layout(data, tiny_sam_dir, tmp_path):
    sam, _ = tiny_sam_dir
    out = tmp_path / "edges"
    assert main(["eval", "edges", "--data", str(data["bsds"]), "--model", sam, "--out", str(out), "--limit", "2",
                 "--bootstrap", "20", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    m = results["tasks"]["edges"]["results"]["tiny_sam"]["metrics"]
    assert set(m) == {"ODS", "OIS", "AP", "R50"} and 0 <= m["ODS"]["value"] <= 1
    assert len(list((out / "edges" / "tiny_sam").glob("*.png"))) == 2
    assert (out / "edges_precision_recall.png").is_file()


def test_text_modes_with_a_plugged_in_mode(data, tiny_sam_dir, tmp_path):
    """clip and native with a random tiny CLIP and projection (wiring only: the README says text runs
    offline only with tiny models), and a registered mode that answers with the first annotator's
    masks: with the oracle over annotators it is perfect, cgF1 1."""
    from grounded.eval.tasks.text import TEXT_MODES, TextMode, register_text_mode
    from grounded.sam.text_prompt import TextPromptProjection
    from grounded.testing.clip import random_tiny_open_clip

    sam, _ = tiny_sam_dir
    clip_dir = random_tiny_open_clip(tmp_path / "clip")
    projection = TextPromptProjection(clip_dim=32, prompt_embed_dim=32).save_pretrained(tmp_path / "projection")
    gold = load_dataset([str(p) for p in data["saco"]])
    truth = {(im.name, p.phrase): [o.rle for o in p.annotations[0]] for im in gold.images for p in im.pairs}

    def first_annotator(ctx, image, phrases):
        name = ctx.current_image
        return [[(rle, 0.9) for rle in truth[name, phrase]] for phrase in phrases]

    register_text_mode(TextMode("first_annotator", (), first_annotator))
    try:
        results = evaluate(["text"], gold, load_segmenters([sam]), tmp_path / "text",
                           Options(modes=["clip", "native", "first_annotator"], clip=str(clip_dir), projection=str(projection),
                                   amg={"points_per_side": 4}, bootstrap=20), progress=False)
    finally:
        TEXT_MODES.pop("first_annotator")
    res = results["tasks"]["text"]["results"]
    assert set(res) == {"tiny_sam / clip", "tiny_sam / native", "tiny_sam / first_annotator"}
    perfect = res["tiny_sam / first_annotator"]
    assert perfect["metrics"]["cgF1"]["value"] == pytest.approx(1, abs=1e-3)
    assert perfect["metrics"]["IL_MCC"]["value"] == pytest.approx(1, abs=1e-5)
    assert perfect["metrics"]["mIoU"]["value"] == 1.0
    assert perfect["extra"]["not_exhaustive_pairs_skipped"] > 0 and perfect["extra"]["pairs"] > 20
    assert perfect["extra"]["per_phrase_miou"]
    for mode in ("clip", "native"):
        assert -1 <= res[f"tiny_sam / {mode}"]["metrics"]["cgF1"]["value"] <= 1
    assert results["errors"]["count"] == 0 and (tmp_path / "text" / "text_cgf1.png").is_file()


def test_bad_input_through_the_command(data, tiny_sam_dir, tmp_path, capsys):
    sam, _ = tiny_sam_dir
    base = ["--model", sam, "--no-progress", "--bootstrap", "0"]
    assert main(["eval", "points", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "a"), *base]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "pointz", "--data", str(data["labels"]), "--out", str(tmp_path / "b"), *base]) == 1
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", "points", "--data", str(data["labels"]), "--reference", "--out", str(tmp_path / "c"), *base]) == 1
    assert "official SAM architecture" in capsys.readouterr().err
    assert main(["eval", "points", "--data", str(data["coco"]), "--categories", "hexagon", "--out", str(tmp_path / "d"), *base]) == 1
    assert "matched no category" in capsys.readouterr().err
    assert main(["eval", "text", "--data", str(data["labels"]), "--out", str(tmp_path / "e"), *base]) == 1
    assert "text needs phrases" in capsys.readouterr().err
    # An unreadable image: reported in errors.jsonl, the other images evaluated.
    broken = tmp_path / "broken"
    shutil.copytree(data["labels"], broken)
    (broken / "images" / "scene2.png").write_bytes(b"not a png")
    assert main(["eval", "boxes", "--data", str(broken), "--out", str(tmp_path / "f"), *base]) == 0
    errors = [json.loads(t) for t in (tmp_path / "f" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["image"] == "scene2.png"
    results = json.loads((tmp_path / "f" / "results.json").read_text())
    assert results["tasks"]["boxes"]["results"]["tiny_sam"]["images"] == 5 and results["errors"]["count"] == 1


def test_instances_from_a_detector_prompted_with_the_category_names(data, tiny_sam_dir, tmp_path, monkeypatch):
    """--detector: the detector is asked for every category name of the data set; its labels become
    category ids. (A stub in place of Grounding DINO; the real one is slow, see test_eval_real.)"""
    import grounded.detect
    from grounded.detections import Detections

    asked = []

    class Stub:
        def detect(self, images, text, box_threshold=0.3, text_threshold=0.25):
            asked.append(text)
            h, w = images[0].shape[:2]
            boxes = np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, w, h]], np.float32)
            return [Detections(boxes, scores=np.array([0.9, 0.4], np.float32), labels=["square", "hexagon"],
                               image_size=(h, w))]

    monkeypatch.setattr(grounded.detect, "load_detector", lambda name, device="cpu": Stub())
    ds = load_dataset([str(data["coco"])], selection=Selection(limit=2))
    results = evaluate(["instances"], ds, load_segmenters([tiny_sam_dir[0]]), tmp_path / "det",
                       Options(detector="stub", bootstrap=0), progress=False)
    assert asked == ["circle . square . triangle"] * 2
    written = json.loads((tmp_path / "det" / results["tasks"]["instances"]["predictions"]["tiny_sam"]).read_text())
    assert [p["category_id"] for p in written] == [2, 2]  # "square"; "hexagon" is no category of the data set


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "enable_grad"])
def test_evaluate_under_every_torch_mode(data, tiny_sam_dir, tmp_path, mode):
    import torch

    ds = load_dataset([str(data["labels"])], selection=Selection(limit=1))
    with getattr(torch, mode)():
        results = evaluate(["points", "boxes", "proposals"], ds, load_segmenters([tiny_sam_dir[0]]), tmp_path,
                           Options(clicks=2, bootstrap=0, amg={"points_per_side": 4}), progress=False)
    assert results["errors"]["count"] == 0
    assert all(results["tasks"][t]["results"]["tiny_sam"]["images"] == 1 for t in ("points", "boxes", "proposals"))


def test_a_resumed_run_retries_what_failed(data, tiny_sam_dir, tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(data["labels"], folder)
    good = (folder / "images" / "scene2.png").read_bytes()
    (folder / "images" / "scene2.png").write_bytes(b"broken")
    ds = load_dataset([str(folder)], selection=Selection(limit=3))
    segmenters = load_segmenters([tiny_sam_dir[0]])
    first = evaluate(["boxes"], ds, segmenters, tmp_path / "out", Options(bootstrap=0), progress=False)
    assert first["errors"]["count"] == 1 and first["tasks"]["boxes"]["results"]["tiny_sam"]["images"] == 2
    (folder / "images" / "scene2.png").write_bytes(good)  # fixed
    second = evaluate(["boxes"], ds, segmenters, tmp_path / "out", Options(bootstrap=0), resume=True, progress=False)
    assert second["errors"]["count"] == 0 and second["tasks"]["boxes"]["results"]["tiny_sam"]["images"] == 3


def test_the_cli_task_names_are_the_registered_tasks():
    from grounded.eval.tasks import TASK_NAMES
    from grounded.eval.tasks.registry import TASKS

    assert TASK_NAMES == tuple(TASKS)


def test_text_mode_sam3_scores_sam3s_own_instances(data, tiny_sam_dir, tmp_path, capsys):
    """`--modes sam3`: every phrase of an image in one SAM 3 call; the masks the task scores are the
    instances `Sam3.segment` gives at the mode's threshold (tiny random SAM 3: scores lie near 0.2-0.26,
    so 0.22 keeps some and drops others)."""
    from grounded.eval.tasks.text import pairs_from_categories
    from grounded.io.image import load_image
    from grounded.sam3 import load_sam3
    from grounded.testing.sam3 import tiny_sam3

    sam, _ = tiny_sam_dir
    sam3_dir = tiny_sam3(tmp_path / "tiny-sam3")
    base = ["--model", sam, "--no-progress", "--bootstrap", "0", "--limit", "2"]
    assert main(["eval", "text", "--data", str(data["coco"]), "--modes", "sam3", "--out", str(tmp_path / "a"), *base]) == 1
    assert "needs --sam3" in capsys.readouterr().err
    assert main(["eval", "text", "--data", str(data["coco"]), "--modes", "sam3", "--sam3", str(sam3_dir),
                 "--score-threshold", "sam3=0.22", "--out", str(tmp_path / "b"), *base]) == 0
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["errors"]["count"] == 0
    summary = results["tasks"]["text"]["results"]["tiny_sam / sam3"]
    assert -1 <= summary["metrics"]["cgF1"]["value"] <= 1
    lines = (tmp_path / "b" / "records" / "text" / "tiny_sam.jsonl").read_text().splitlines()
    records = {line["image"]: line["record"] for line in map(json.loads, lines)}
    dataset = load_dataset([str(data["coco"])], selection=Selection(limit=2))
    model = load_sam3(sam3_dir, device="cpu")
    kept = dropped = 0
    assert set(records) == {item.name for item in dataset.images}
    for item in dataset.images:
        pairs = [p for p in pairs_from_categories(item, dataset.categories, False) if p.exhaustive]
        expected = model.segment([load_image(item.path)], [[p.phrase for p in pairs]], threshold=0.22)[0]
        everything = model.segment([load_image(item.path)], [[p.phrase for p in pairs]], threshold=0.0)[0]
        rows = records[item.name]["modes"]["sam3"]
        assert [r["phrase"] for r in rows] == [p.phrase for p in pairs]
        for j, row in enumerate(rows):
            assert row["n_pred"] == row["n_kept"] == int((expected.class_id == j).sum())
        kept, dropped = kept + len(expected), dropped + len(everything) - len(expected)
    assert kept > 0 and dropped > 0


def test_the_progress_bar_moves_per_image(data, tiny_sam_dir, tmp_path, capsys):
    ds = load_dataset([str(data["coco"])])
    segmenters = load_segmenters([tiny_sam_dir[0]])
    evaluate(["boxes"], ds, segmenters, tmp_path / "out", Options(bootstrap=0))
    err = capsys.readouterr().err
    n = len(ds.images)
    assert "eval boxes" in err and all(f"| {i}/{n} [" in err for i in range(n + 1)), err[-500:]

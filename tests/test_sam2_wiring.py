"""SAM 2.1 wherever grounded takes SAM: the pipeline nodes and the CLI (`--set model=sam2.1_hiera_tiny`),
the known names in `grounded weights`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.cli import main
from grounded.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, Sam2Config, build_sam2, save_pretrained
from sam2_reference import TINY_HIERA


def _picture(path, h=60, w=80, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_run_with_the_known_name_sam2_1_hiera_tiny(tmp_path, monkeypatch, capsys):
    """The weights cache holds a file in the official layout under the known name (random Hiera-T
    weights: the real file is not reachable offline; the name is unverified, so any file is taken)."""
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "weights").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save({"model": build_sam2("hiera_tiny").state_dict()}, tmp_path / "cache" / "weights" / "sam2.1_hiera_tiny.pt")
    _picture(tmp_path / "a.png")
    manifest = tmp_path / "clicks.jsonl"
    manifest.write_text('{"image": "a.png", "points": [[30, 20], [[60, 40, 1], [5, 5, 0]]]}\n')
    out = tmp_path / "out"
    code = main(["run", "point_masks", str(manifest), "--out", str(out), "--set", "model=sam2.1_hiera_tiny",
                 "--set", "device=cpu", "--no-progress"])
    assert code == 0, capsys.readouterr()
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == 2 and coco["images"][0]["width"] == 80

    assert main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "sam2.1_hiera_tiny" in listing and "sam2:hiera_tiny" in listing and "unverified" in listing
    assert "cached " in next(line for line in listing.splitlines() if line.startswith("sam2.1_hiera_tiny "))


def test_segment_auto_node_takes_a_sam2_folder_and_gives_the_generator_s_masks(tmp_path):
    from grounded.nodes import SegmentAuto, WriteCoco
    from grounded.pipeline import Pipeline
    from grounded.pipeline.models import ModelCache
    from grounded.nodes.segment import sam_predictor

    folder = save_pretrained(build_sam2(Sam2Config(**TINY_HIERA)), tmp_path / "tiny_sam2")
    image = _picture(tmp_path / "a.png")
    settings = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    pipe = Pipeline([SegmentAuto(model=str(folder), device="cpu", **settings), WriteCoco(file="masks.json")])
    assert pipe.run(image, tmp_path / "out", progress=False).ok == 1
    annotations = json.loads((tmp_path / "out" / "masks.json").read_text())["annotations"]

    with ModelCache() as models:
        predictor = sam_predictor(models, str(folder), "cpu")
        assert isinstance(predictor, SAM2ImagePredictor)
        records = SAM2AutomaticMaskGenerator(predictor.model, **settings).generate(np.asarray(Image.open(image)))
    assert len(annotations) == len(records) == 27
    assert sorted(a["area"] for a in annotations) == sorted(r["area"] for r in records)


@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2.1_hiera_large", "sam2_hiera_base_plus"])
def test_known_names_carry_the_official_urls_and_no_hash(name):
    from grounded import weights

    checkpoint = weights.get(name)
    assert checkpoint.sha256 is None  # unverified until someone checks a real file
    assert str(checkpoint.sources[0]).startswith("https://dl.fbaipublicfiles.com/segment_anything_2/")
    assert str(checkpoint.sources[0]).endswith(f"/{name}.pt")


def test_grounded_eval_takes_a_sam2_model(tmp_path):
    """`grounded eval` with a SAM 2 folder: its boxes and proposals come from SAM2ImagePredictor and
    SAM2AutomaticMaskGenerator, and with `--reference` the official sam2 package runs beside it on the
    same weights, with the same figures."""
    from grounded.eval import Options, evaluate, load_dataset, load_segmenters
    from make_eval_data import write_all

    data = write_all(tmp_path / "data", n=2)
    folder = save_pretrained(build_sam2(Sam2Config(**TINY_HIERA)), tmp_path / "tiny_sam2")
    segmenter, reference = load_segmenters([str(folder)], reference=True)
    assert isinstance(segmenter.predictor, SAM2ImagePredictor) and reference.label.endswith("(reference)")
    dataset = load_dataset([str(data["coco"])])
    results = evaluate(["points", "boxes", "proposals"], dataset, [segmenter, reference], tmp_path / "out",
                       Options(bootstrap=0, clicks=2, amg={"points_per_side": 4}), progress=False)
    for task in ("points", "boxes", "proposals"):
        figures = results["tasks"][task]["results"]
        ours, theirs = figures[segmenter.label]["metrics"], figures[reference.label]["metrics"]
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_allclose(ours[name]["value"], theirs[name]["value"], atol=1e-3, rtol=0,
                                       err_msg=f"{task} {name}")  # (NaN on both sides: no object of that size)
    boxes = results["tasks"]["boxes"]["results"][segmenter.label]["metrics"]
    assert boxes["mIoU"]["n"] == sum(len(i.instances) for i in dataset.images) > 0
    image = np.asarray(Image.open(dataset.images[0].path).convert("RGB"))
    x, y, w, h = dataset.images[0].instances[0].bbox
    box = np.array([x, y, x + w, y + h], np.float64)
    segmenter.set_image(image)
    masks, scores, _ = segmenter.predict(boxes=box[None], multimask=False)
    predictor = SAM2ImagePredictor(segmenter.predictor.model)
    predictor.set_image(image)
    want_masks, want_scores, _ = predictor.predict(box=box, multimask_output=False)
    np.testing.assert_array_equal(masks[0], want_masks)
    np.testing.assert_allclose(scores[0], want_scores, atol=1e-6)


def test_grounded_annotate_takes_a_sam2_model(tmp_path, monkeypatch, capsys):
    """`grounded annotate --model <SAM 2 folder>` builds the page's session on SAM 2's graphs (the page
    itself: tests/test_sam2_page.py); --embed-in-page is refused with the reason."""
    import grounded.commands.annotate as command

    folder = save_pretrained(build_sam2(Sam2Config(**TINY_HIERA, image_size=512)), tmp_path / "tiny_sam2")
    image = _picture(tmp_path / "a.png")
    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))
    served = []
    monkeypatch.setattr(command, "serve_page", lambda session, args, what: served.append((session, what)))
    monkeypatch.setattr(command, "check_page_built", lambda: None)
    assert main(["annotate", str(image), "--out", str(tmp_path / "out"), "--model", str(folder), "--no-browser"]) == 0
    (session, what), = served
    assert session.family == "sam2" and session.info()["manifest"]["family"] == "sam2" and "1 images" in what
    blob = np.frombuffer(session.embedding(session.images[0]), np.float32)
    shapes = [i["shape"] for i in session.info()["manifest"]["image_inputs"]]
    assert blob.size == sum(int(np.prod(s)) for s in shapes) and shapes[1] == [1, 32, 128, 128]
    code = main(["annotate", str(image), "--out", str(tmp_path / "out2"), "--model", str(folder), "--embed-in-page",
                 "--no-browser"])
    assert code == 1 and "is a SAM 2 model: --embed-in-page" in capsys.readouterr().err

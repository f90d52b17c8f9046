"""pipelines/auto_label.yaml and `grounded label`: caption (BLIP) -> tags -> detect (Grounding DINO)
-> segment_boxes (SAM) -> COCO / YOLO / JSON / overlays, with tiny random models of every kind
loaded through their real loaders. The tiny captioner is steered by a caption prefix (conditional
captioning), so the tags are known: dog, stick, beach."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from grounded.cli import main
from grounded.io.results import read_jsonl
from grounded.pipeline.spec import load_pipeline

PREFIX = "a dog on the beach with a stick on the"  # ends on a word a glued-on piece cannot hide a tag in


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from demo_helpers import tiny_models as build

    models = build(tmp_path_factory.getbasetemp() / "demo-models")  # shared with the demo tests of the session
    return {key: models[key] for key in ("captioner", "detector", "sam")}


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(60, 80), (72, 48)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def model_sets(models, *more):
    args = []
    # Small detector inputs keep the tiny Swin backbone quick (the default resizes to 800 pixels).
    fast = [("device", "cpu"), ("detect.size", 96), ("detect.max_size", 128)]
    for key, value in list(models.items()) + fast + list(more):
        args += ["--set", f"{key}={value}"]
    return args


def test_spec_has_grounded_sams_thresholds():
    pipe = load_pipeline("auto_label")
    detect = pipe.node("detect")
    assert (detect.box_threshold, detect.text_threshold, detect.nms, detect.nms_class_agnostic) == (0.25, 0.2, 0.5, True)
    assert detect.empty_text == "none"  # a caption that names nothing: no labels, not an error
    assert [n["node"] for n in pipe.describe()] == ["caption", "tags", "detect", "segment_boxes", "write_coco",
                                                    "write_yolo", "write_json", "write_overlays"]
    assert pipe.node("tags").write_text


def test_label_writes_every_format_with_captions_tags_and_masks(photos, tmp_path, tiny_models, monkeypatch, capsys):
    from grounded.sam.predictor import SamPredictor

    calls = []
    original = SamPredictor.predict_many

    def spy(self, *args, **kwargs):
        calls.append(len(kwargs["boxes"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict_many", spy)
    out = tmp_path / "labels"
    rc = main(["label", str(photos), "--out", str(out), "--no-progress"]
              + model_sets(tiny_models, ("caption.prompt", PREFIX), ("tags.max_tags", 3), ("box_threshold", 0.05),
                           ("text_threshold", 0.05)))
    assert rc == 0
    assert "1 failed" in capsys.readouterr().out  # the broken file, reported
    assert [e["id"] for e in read_jsonl(out / "errors.jsonl")] == ["broken"]

    coco = json.loads((out / "coco.json").read_text())
    names = [c["name"] for c in coco["categories"]]
    assert names == ["beach", "dog", "stick"]  # the tags (the caption's first three), sorted
    assert [img["item_id"] for img in coco["images"]] == ["photo0", "photo1"]
    assert all(img["caption"].startswith(PREFIX) for img in coco["images"])
    assert coco["annotations"], "the tiny detector found nothing at threshold 0.05"
    for ann in coco["annotations"]:
        img = coco["images"][ann["image_id"] - 1]
        assert ann["segmentation"]["size"] == [img["height"], img["width"]]
        assert names[ann["category_id"] - 1] == ann["label"] and ann["label"] in {"dog", "stick", "beach"}
        assert 0.05 <= ann["score"] <= 1 and "mask_score" in ann
    per_image = [sum(a["image_id"] == i for a in coco["annotations"]) for i in (1, 2)]
    assert sorted(calls) == sorted(n for n in per_image if n)  # one decoder call per image, all its boxes at once

    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "beach", 1: "dog", 2: "stick"}
    for i in range(2):
        lines = (out / "yolo" / "labels" / f"photo{i}.txt").read_text().splitlines()
        assert len(lines) == per_image[i]
        doc = json.loads((out / "json" / f"photo{i}.json").read_text())
        assert doc["tags"] == ["dog", "beach", "stick"] and len(doc["detections"]) == per_image[i]
        assert Image.open(out / "overlays" / f"photo{i}.png").size == Image.open(photos / f"photo{i}.png").size


def test_text_vocabulary_sets_the_tags_and_the_categories(photos, tmp_path, tiny_models):
    out = tmp_path / "labels"
    rc = main(["label", str(photos / "photo0.png"), "--out", str(out), "--no-progress", "--text", "cat. dog."]
              + model_sets(tiny_models, ("caption.prompt", PREFIX), ("box_threshold", 0.05), ("text_threshold", 0.05)))
    assert rc == 0
    coco = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"]  # yours, in your order
    doc = json.loads((out / "json" / "photo0.json").read_text())
    assert doc["tags"][0] == "dog" and set(doc["tags"]) <= {"cat", "dog"}  # the random words may add a cat
    assert doc["text"] == ". ".join(doc["tags"]) + "."
    assert {d["label"] for d in doc["detections"]} <= set(doc["tags"])
    assert yaml.safe_load((out / "yolo" / "data.yaml").read_text())["names"] == {0: "cat", 1: "dog"}


def test_an_image_whose_caption_names_nothing_gets_no_labels_not_an_error(photos, tmp_path, tiny_models):
    out = tmp_path / "labels"
    # The tiny captioner's vocabulary has no zebra, so its caption cannot name one.
    rc = main(["label", str(photos / "photo1.png"), "--out", str(out), "--no-progress", "--fail-on-error",
               "--text", "zebra."] + model_sets(tiny_models, ("box_threshold", 0.0)))
    assert rc == 0
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 1 and coco["annotations"] == []
    assert (out / "yolo" / "labels" / "photo1.txt").read_text() == ""


def test_empty_text_is_refused_with_a_clear_message(photos, tmp_path, capsys):
    assert main(["label", str(photos), "--out", str(tmp_path / "x"), "--text", " . "]) == 1
    assert "names no class" in capsys.readouterr().err

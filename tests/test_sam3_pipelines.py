"""SAM 3 everywhere text-to-mask exists: `segment_text(..., mode="sam3")`, the `segment_concepts`
node, pipelines/text_to_mask_sam3.yaml and auto_label_sam3.yaml, `grounded segment --mode sam3`
and `grounded label --segmenter sam3`, each equal to the library (`grounded.sam3`) on a tiny
random checkpoint. (The demo's SAM 3 mode: tests/test_demos.py.)"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.cli import main
from grounded.io.results import read_jsonl
from grounded.sam3 import Concept, correct_with_clicks, load_sam3
from grounded.testing.sam3 import tiny_sam3
from grounded.text_to_mask import segment_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")
THRESHOLD = 0.24  # keeps a few of the tiny model's 40 queries per phrase
PREFIX = "a dog on the beach with a stick on the"  # steers the tiny captioner: tags dog, beach, stick


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    return str(tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3", seed=1))


@pytest.fixture(scope="module")
def sam3(sam3_dir):
    return load_sam3(sam3_dir, device="cpu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(60, 80), (72, 48)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"photo{i}.png")
    return folder


def image_of(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_segment_text_sam3_mode_is_the_library(sam3_dir, sam3, photos):
    image = image_of(photos / "photo0.png")
    dets = segment_text(image, "Cat. a dog.", mode="sam3", sam3=sam3_dir, sam3_threshold=THRESHOLD, device="cpu")
    expected = sam3.segment([image], [["cat", "a dog"]], threshold=THRESHOLD)[0]
    assert len(dets) >= 2 and dets == expected and set(dets.labels) == {"cat", "a dog"}
    click = [[20, 30, 0]]
    clicked = segment_text(image, "cat. a dog.", mode="sam3", points=click, sam3=sam3, sam3_threshold=THRESHOLD)
    assert clicked.rles == correct_with_clicks(sam3.predictor(), image, expected, click).rles
    assert clicked.data["refined"].sum() == 1
    nothing = segment_text(image, "cat", mode="sam3", sam3=sam3, sam3_threshold=1.0)
    assert len(nothing) == 0 and nothing.has_masks


@pytest.mark.parametrize("text, message", [("", "empty"), ("?!...", "only punctuation")])
def test_sam3_mode_refuses_bad_text_before_loading(text, message):
    with pytest.raises(ValueError, match=message):
        segment_text(np.zeros((8, 8, 3), np.uint8), text, mode="sam3", sam3="no-such-model")


def test_segment_cli_sam3_mode_with_a_click(sam3_dir, sam3, photos, tmp_path, capsys):
    image = photos / "photo0.png"
    out = tmp_path / "out"
    code = main(["segment", str(image), "--text", "cat. a dog.", "--mode", "sam3", "--sam3", sam3_dir,
                 "--sam3-threshold", str(THRESHOLD), "--point", "20,30,0", "--device", "cpu", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    expected = sam3.segment([image_of(image)], [["cat", "a dog"]], threshold=THRESHOLD)[0]
    expected = correct_with_clicks(sam3.predictor(), image_of(image), expected, [[20, 30, 0]])
    coco = json.loads((out / "coco.json").read_text())
    assert [a["label"] for a in coco["annotations"]] == expected.labels
    assert [a["segmentation"]["counts"] for a in coco["annotations"]] == [r["counts"] for r in expected.rles]
    assert f"{len(expected)} masks" in capsys.readouterr().out


def test_segment_cli_sam3_mode_names_missing_and_gated_weights(photos, tmp_path, monkeypatch, capsys):
    from grounded.testing.hf_cache import point_hf_cache_at

    point_hf_cache_at(monkeypatch, tmp_path / "empty-hub")
    common = ["segment", str(photos / "photo0.png"), "--text", "cat", "--mode", "sam3", "--device", "cpu",
              "--out", str(tmp_path / "out"), "--no-progress"]
    assert main([*common, "--sam3", "facebook/sam3"]) == 1
    error = capsys.readouterr().err
    assert "'facebook/sam3'" in error and str(tmp_path / "empty-hub") in error
    assert "gated" in error and "request access at https://huggingface.co/facebook/sam3" in error
    assert main([*common, "--sam3", str(tmp_path / "no-such-sam3")]) == 1
    assert "no-such-sam3" in capsys.readouterr().err
    assert not (tmp_path / "out" / "coco.json").exists()


def test_a_spec_of_my_own_with_exemplars_reports_the_image_they_do_not_fit(sam3_dir, sam3, photos, tmp_path):
    """A segment_concepts node in a spec of the user's: an exemplar box inside the first photo
    (80x60) lies outside the second (48x72): that image is reported, the first kept."""
    spec = tmp_path / "mugs.yaml"
    spec.write_text(f"""version: 1
inputs: [image, image_path, image_id]
nodes:
  - node: segment_concepts
    params: {{model: {json.dumps(sam3_dir)}, device: cpu, text: a mug, threshold: {THRESHOLD},
             exemplars: [[5, 5, 60, 40], [10, 30, 30, 50, 0]]}}
  - node: write_coco
""")
    out = tmp_path / "run"
    assert main(["run", str(spec), str(photos), "--out", str(out), "--no-progress"]) == 0
    errors = read_jsonl(out / "errors.jsonl")
    assert len(errors) == 1 and "photo1" in json.dumps(errors[0])
    assert "exemplar box [5.0, 5.0, 60.0, 40.0] lies outside the 48x72 image" in errors[0]["error"]
    coco = json.loads((out / "coco.json").read_text())
    assert [Path(im["file_name"]).name for im in coco["images"]] == ["photo0.png"]
    expected = sam3.segment([image_of(photos / "photo0.png")],
                            [[Concept("a mug", [[5, 5, 60, 40], [10, 30, 30, 50]], [1, 0])]], threshold=THRESHOLD)[0]
    assert [a["segmentation"]["counts"] for a in coco["annotations"]] == [r["counts"] for r in expected.rles]
    assert len(expected) and set(expected.labels) == {"a mug"}


def test_text_to_mask_sam3_spec_over_a_manifest_keeps_the_good_items(sam3_dir, sam3, photos, tmp_path):
    manifest = tmp_path / "items.jsonl"
    items = [{"image": str(photos / "photo0.png"), "text": "cat. a dog."},
             {"image": str(photos / "photo1.png"), "text": "a mug", "points": [[10, 20, 1]]},
             {"image": str(photos / "photo1.png"), "text": " ... "}]
    manifest.write_text("\n".join(json.dumps(item) for item in items) + "\n")
    out = tmp_path / "run"
    code = main(["run", "text_to_mask_sam3", str(manifest), "--out", str(out), "--no-progress",
                 "--set", f"sam3={sam3_dir}", "--set", f"threshold={THRESHOLD}", "--set", "device=cpu"])
    assert code == 0
    errors = read_jsonl(out / "errors.jsonl")
    assert len(errors) == 1 and "empty detection prompt" in errors[0]["error"]  # the bad text, reported; the others kept
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 2
    first = sam3.segment([image_of(photos / "photo0.png")], [["cat", "a dog"]], threshold=THRESHOLD)[0]
    second = sam3.segment([image_of(photos / "photo1.png")], [["a mug"]], threshold=THRESHOLD)[0]
    second = correct_with_clicks(sam3.predictor(), image_of(photos / "photo1.png"), second, [[10, 20, 1]])
    for number, dets in ((1, first), (2, second)):
        anns = [a for a in coco["annotations"] if a["image_id"] == number]
        assert [a["segmentation"]["counts"] for a in anns] == [r["counts"] for r in dets.rles] and anns


def test_the_node_takes_exemplars_and_checks_its_parameters(sam3_dir, sam3, photos):
    from grounded.nodes.sam3 import SegmentConcepts
    from grounded.pipeline import ModelCache, Pipeline
    from grounded.types import Sample

    image = image_of(photos / "photo0.png")
    node = SegmentConcepts(model=sam3_dir, device="cpu", text="cat", exemplars=[[5, 5, 40, 30], [40, 20, 70, 50, 0]],
                           threshold=THRESHOLD)
    with ModelCache() as models:
        pipeline = Pipeline([node], inputs=["image"])
        pipeline.open(models)
        dets = pipeline.process([Sample(image=image)])[0].detections
    expected = sam3.segment([image], [[Concept("cat", [[5, 5, 40, 30], [40, 20, 70, 50]], [1, 0])]],
                            threshold=THRESHOLD)[0]
    assert dets == expected
    nothing = SegmentConcepts(model=sam3_dir, device="cpu", text="cat. a dog.", threshold=1.0)
    with ModelCache() as models:
        pipeline = Pipeline([nothing], inputs=["image"])
        pipeline.open(models)
        empty = pipeline.process([Sample(image=image)])[0].detections
    assert len(empty) == 0 and empty.has_masks and empty.image_size == image.shape[:2]
    for params, message in [(dict(phrases_from="none"), "set exemplars"), (dict(text=" . "), "empty detection prompt"),
                            (dict(exemplars=[[1, 2, 3]]), "an exemplar is"), (dict(points=[[1, 2, 7]]), "label is 1"),
                            (dict(prompts_per_call=0), "prompts_per_call")]:
        with pytest.raises(ValueError, match=message):
            SegmentConcepts(**params)


def test_label_with_the_sam3_segmenter(sam3_dir, sam3, photos, tmp_path_factory, capsys):
    from demo_helpers import tiny_models

    captioner = tiny_models(tmp_path_factory.getbasetemp() / "demo-models")["captioner"]  # shared with other tests
    out = tmp_path_factory.mktemp("labels")
    common = ["--no-progress", "--segmenter", "sam3", "--set", f"sam3={sam3_dir}", "--set", f"captioner={captioner}",
              "--set", f"caption.prompt={PREFIX}", "--set", f"threshold={THRESHOLD}", "--set", "device=cpu"]
    assert main(["label", str(photos), "--out", str(out / "all"), *common]) == 0
    coco = json.loads((out / "all" / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["beach", "dog", "stick"]  # the tags, sorted
    for number, path in ((1, photos / "photo0.png"), (2, photos / "photo1.png")):
        doc = json.loads((out / "all" / "json" / f"{path.stem}.json").read_text())
        expected = sam3.segment([image_of(path)], [doc["tags"]], threshold=THRESHOLD)[0]
        anns = [a for a in coco["annotations"] if a["image_id"] == number]
        assert [a["label"] for a in anns] == expected.labels and anns
        assert [a["segmentation"]["counts"] for a in anns] == [r["counts"] for r in expected.rles]
    # An image whose caption names none of your classes gets no labels, not an error.
    assert main(["label", str(photos / "photo1.png"), "--out", str(out / "zebra"), "--text", "zebra.",
                 "--fail-on-error", *common]) == 0
    assert json.loads((out / "zebra" / "coco.json").read_text())["annotations"] == []
    assert "no phrase to look for" in (out / "zebra" / "manifest.jsonl").read_text()


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_the_node_and_segment_text_under_each_grad_mode(sam3_dir, sam3, photos, mode):
    from grounded.nodes.sam3 import SegmentConcepts
    from grounded.pipeline import ModelCache, Pipeline
    from grounded.types import Sample

    image, click = image_of(photos / "photo0.png"), [[20, 30, 0]]
    expected = sam3.segment([image], [["cat", "a dog"]], threshold=THRESHOLD)[0]
    expected = correct_with_clicks(sam3.predictor(), image, expected, click)
    assert expected.data["refined"].sum() == 1
    with mode():
        with ModelCache() as models:
            pipeline = Pipeline([SegmentConcepts(model=sam3_dir, device="cpu", text="cat. a dog.", points=click,
                                                 threshold=THRESHOLD)], inputs=["image"])
            pipeline.open(models)
            from_node = pipeline.process([Sample(image=image)])[0].detections
            from_text = segment_text(image, "cat. a dog.", mode="sam3", points=click, sam3=sam3_dir,
                                     sam3_threshold=THRESHOLD, device="cpu", models=models)  # the node's model
            assert len(models) == 1
    for dets in (from_node, from_text):
        assert dets.rles == expected.rles and dets.labels == expected.labels
        assert np.array_equal(dets.scores, expected.scores) and np.array_equal(dets.xyxy, expected.xyxy)
        assert np.array_equal(dets.data["mask_score"], expected.data["mask_score"], equal_nan=True)

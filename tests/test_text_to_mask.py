"""Text to mask (grounded.text_to_mask, the text_to_mask*.yaml pipelines, `grounded segment --text`):
the three modes, clicks that correct the result, and bad input.

Real MobileSAM where real masks matter (synthetic shapes: the clip mode must pick the named shape,
a negative click must remove a region); tiny random SAM and Grounding DINO where only the wiring
is checked."""

from pathlib import Path

import numpy as np
import pytest
import torch

from grounded.detections import Detections
from grounded.testing.clip import tiny_trained_clip
from grounded.testing.shapes import draw_scene
from grounded.text_to_mask import NO_PROJECTION, segment_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trained_clip_dir(tmp_path_factory):
    # Same folder as tests/test_clip.py: trained once per session.
    return tiny_trained_clip(tmp_path_factory.getbasetemp() / "tiny_clip")


@pytest.fixture(scope="module")
def clip(trained_clip_dir):
    from grounded.clip import load_clip

    return load_clip(str(trained_clip_dir))


@pytest.fixture(scope="module")
def mobile_predictor(mobile_sam_checkpoint):
    from grounded.sam import SamPredictor, from_pretrained

    return SamPredictor(from_pretrained(mobile_sam_checkpoint), cache_size=8)


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory):
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    return str(save_pretrained(tiny_sam("vit", seed=3), tmp_path_factory.mktemp("tiny_sam")))


def iou(a, b):
    return float((a & b).sum() / max((a | b).sum(), 1))


class StubDetector:
    """A detector with fixed boxes (the `.detect` interface of grounded.detect), for tests that need
    boxes in known places; records what it was asked."""

    def __init__(self, boxes):
        self.boxes, self.calls = np.asarray(boxes, np.float32).reshape(-1, 4), []

    def detect(self, images, text, box_threshold=0.3, text_threshold=0.25, **kwargs):
        self.calls.append((text, box_threshold, text_threshold))
        size = images[0].shape[:2]
        n = len(self.boxes)
        return [Detections(self.boxes, scores=np.full(n, 0.9, np.float32), labels=[text] * n, image_size=size)]


def _scene(seed, kinds, size=128):
    return draw_scene(np.random.default_rng(seed), size, len(kinds), kinds=kinds)


# ---- clip mode: automatic masks ranked by the tiny CLIP trained on shapes ----------------------

def test_clip_mode_picks_the_named_shape(mobile_predictor, clip):
    # Distractors share the colour (a red square) or the shape (a blue circle) of the target.
    kinds = [("red", "circle"), ("red", "square"), ("blue", "circle")]
    right, candidates = 0, []
    for seed in range(4):
        scene = _scene(1000 + seed, kinds)
        dets = segment_text(scene.image, "a red circle", mode="clip", sam=mobile_predictor, clip=clip,
                            points_per_side=8, top_k=None)
        candidates.append(len(dets))
        assert dets.labels == ["a red circle"] * len(dets)
        assert np.all(np.diff(dets.data["clip_score"]) <= 0)  # best first
        right += iou(dets.mask[0], scene.masks[0]) > 0.8
    # At least the three shapes are candidates (chance <= 1/3); the named one wins in most images.
    assert min(candidates) >= 3, candidates
    assert right >= 3, f"{right}/4 (candidates per image: {candidates})"


# ---- grounded mode -----------------------------------------------------------------------------

def test_grounded_mode_segments_the_detected_box_with_real_sam(mobile_predictor):
    scene = _scene(7, [("red", "circle"), ("blue", "square"), ("green", "triangle")])
    detector = StubDetector(scene.boxes[:2])
    dets = segment_text(scene.image, "a red circle . a blue square", sam=mobile_predictor, detector=detector,
                        box_threshold=0.4, text_threshold=0.2)
    assert detector.calls == [("a red circle . a blue square", 0.4, 0.2)]
    assert len(dets) == 2 and dets.has_masks
    assert iou(dets.mask[0], scene.masks[0]) > 0.85 and iou(dets.mask[1], scene.masks[1]) > 0.85
    assert dets.data["mask_score"].shape == (2,)


def test_grounded_mode_no_detection_is_an_empty_result(mobile_predictor):
    scene = _scene(8, [("red", "circle")])
    dets = segment_text(scene.image, "a dog", sam=mobile_predictor, detector=StubDetector(np.zeros((0, 4))),
                        points=[[10, 10, 0]])
    assert len(dets) == 0 and dets.has_masks and dets.mask.shape == (0, 128, 128)


def test_grounded_mode_with_tiny_grounding_dino_one_decoder_call(tmp_path, tiny_sam_dir, monkeypatch):
    from grounded.pipeline import ModelCache, load_pipeline
    from grounded.sam import SamPredictor
    from grounded.testing.dino import tiny_hf
    from grounded.types import Sample

    from grounded.detect import load_detector

    folder = tiny_hf(tmp_path / "gdino", seed=1)
    detector = load_detector(str(folder), size=160, max_size=240)  # small inputs: the Swin backbone is real-sized
    calls = []
    original = SamPredictor.predict_many

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("boxes"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "predict_many", counting)
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    with ModelCache() as models:
        dets = segment_text(image, "dog . cat .", sam=tiny_sam_dir, detector=detector, box_threshold=0.2,
                            models=models, device="cpu")
        assert len(dets) >= 2 and dets.mask.shape[1:] == (96, 128)
        assert len(calls) == 1 and len(calls[0]) == len(dets)  # every box in one decoder call
        none = segment_text(image, "dog . cat .", sam=tiny_sam_dir, detector=detector, box_threshold=0.99999,
                            models=models, device="cpu")
        assert len(none) == 0 and none.has_masks
        # The same steps as a pipeline spec.
        pipe = load_pipeline(ROOT / "pipelines" / "text_to_mask.yaml",
                             [f"detector={folder}", f"sam={tiny_sam_dir}", "device=cpu", "box_threshold=0.2", "size=160"])
        pipe.nodes = [n for n in pipe.nodes if not n.name.startswith("write_")]
        out = pipe(Sample(image=image, text="dog . cat ."), models=models)
    assert len(out.detections) == len(dets)
    assert np.array_equal(out.detections.mask, dets.mask)


# ---- clicks correct the result -----------------------------------------------------------------

def test_a_negative_click_removes_a_region(mobile_predictor):
    scene = _scene(21, [("red", "circle"), ("blue", "square")])
    union_box = np.concatenate([scene.boxes[:, :2].min(0), scene.boxes[:, 2:].max(0)])
    detector = StubDetector([union_box])
    before = segment_text(scene.image, "a red circle", sam=mobile_predictor, detector=detector).mask[0]
    ys, xs = np.nonzero(scene.masks[1])
    click = [float(np.median(xs)), float(np.median(ys)), 0]
    after = segment_text(scene.image, "a red circle", sam=mobile_predictor, detector=detector, points=[click])
    kept_before = (before & scene.masks[1]).sum() / scene.masks[1].sum()
    kept_after = (after.mask[0] & scene.masks[1]).sum() / scene.masks[1].sum()
    assert kept_before > 0.5, "the box alone covers the blue square"
    assert kept_after < 0.1, "the negative click took the blue square out"
    assert iou(after.mask[0], scene.masks[0]) > 0.8
    assert after.data["refined"].tolist() == [True]


def test_a_positive_click_adds_the_missing_part(mobile_sam_checkpoint):
    from grounded.nodes import RefinePoints
    from grounded.pipeline import ModelCache, Pipeline
    from grounded.types import Sample

    scene = _scene(1000, [("red", "circle"), ("red", "square"), ("blue", "circle")])
    circle = scene.masks[0]
    ys, xs = np.nonzero(circle)
    top = circle.copy()
    top[int(np.median(ys)):] = False  # a result that found only the top half
    ly, lx = np.nonzero(circle & ~top)
    click = [float(np.median(lx)), float(np.percentile(ly, 75)), 1]
    node = RefinePoints(model=str(mobile_sam_checkpoint), device="cpu", points=[click])
    with ModelCache() as models:
        out = Pipeline([node], inputs=["image", "detections"])(
            Sample(image=scene.image, detections=Detections.from_masks(top[None])), models=models)
        unchanged = Pipeline([RefinePoints(model=str(mobile_sam_checkpoint), device="cpu")], inputs=["image", "detections"])(
            Sample(image=scene.image, detections=Detections.from_masks(top[None])), models=models)
    assert iou(top, circle) < 0.5
    assert iou(out.detections.mask[0], circle) > 0.95
    assert out.detections.xyxy[0, 3] > top.nonzero()[0].max() + 10  # the box followed the mask
    assert np.array_equal(unchanged.detections.mask[0], top)  # no clicks: passed through


# ---- native mode -------------------------------------------------------------------------------

def test_native_mode_without_projection_says_so(tiny_sam_dir, trained_clip_dir):
    from grounded.nodes import SegmentTextNative
    from grounded.pipeline import load_pipeline

    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="needs text-prompt projection weights.*grounded train"):
        segment_text(image, "a dog", mode="native", sam=tiny_sam_dir, clip=str(trained_clip_dir))
    with pytest.raises(ValueError, match="needs text-prompt projection weights"):
        SegmentTextNative(model=tiny_sam_dir, clip=str(trained_clip_dir))
    with pytest.raises(Exception, match="needs text-prompt projection weights"):
        load_pipeline(ROOT / "pipelines" / "text_to_mask_native.yaml", [f"clip={trained_clip_dir}"])
    assert "projection" in NO_PROJECTION


def test_native_mode_projects_the_text_and_takes_clicks(tmp_path, tiny_sam_dir, trained_clip_dir, clip, monkeypatch):
    import grounded.sam.text_prompt as text_prompt
    from grounded.pipeline import ModelCache
    from grounded.sam.text_prompt import TextPromptProjection

    torch.manual_seed(0)
    projection = TextPromptProjection(clip_dim=clip.embed_dim, prompt_embed_dim=32)
    folder = projection.save_pretrained(tmp_path / "projection")
    seen = []
    original = text_prompt.predict_from_text

    def spy(predictor, proj, embedding, **kwargs):
        seen.append((embedding, kwargs))
        return original(predictor, proj, embedding, **kwargs)

    monkeypatch.setattr(text_prompt, "predict_from_text", spy)
    image = _scene(3, [("red", "circle")], size=64).image
    with ModelCache() as models:
        dets = segment_text(image, "a red circle", mode="native", sam=tiny_sam_dir, clip=str(trained_clip_dir),
                            projection=str(folder), models=models, device="cpu")
        clicked = segment_text(image, "a red circle", mode="native", sam=tiny_sam_dir, clip=str(trained_clip_dir),
                               projection=str(folder), points=[[5, 6, 0], [30, 30]], models=models, device="cpu")
    assert len(dets) == 1 and dets.mask.shape == (1, 64, 64) and dets.labels == ["a red circle"]
    assert torch.allclose(seen[0][0], clip.encode_text(["a red circle"])[0])
    assert "point_coords" not in seen[0][1]
    assert seen[1][1]["point_coords"].tolist() == [[5, 6], [30, 30]] and seen[1][1]["point_labels"].tolist() == [0, 1]
    assert len(clicked) == 1


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [("", "empty"), ("  \n", "empty"), ("?!...", "only punctuation"),
                                           (None, "must be a string")])
def test_bad_texts_are_refused_before_anything_loads(text, message):
    with pytest.raises(ValueError, match=message):
        segment_text(np.zeros((8, 8, 3), np.uint8), text, sam="no-such-model")


def test_bad_mode_and_clicks_are_refused():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown text-to-mask mode"):
        segment_text(image, "a dog", mode="magic")
    with pytest.raises(ValueError, match="a click is"):
        segment_text(image, "a dog", points=[[1, 2, 3, 4]], sam="no-such-model")
    with pytest.raises(ValueError, match="label is 1"):
        segment_text(image, "a dog", points=[[1, 2, 5]], sam="no-such-model")
    with pytest.raises(ValueError, match="needs a CLIP model"):
        segment_text(image, "a dog", mode="clip", sam=object(), clip=None)


# ---- the CLI -------------------------------------------------------------------------------------

def test_segment_cli_text_clip_mode(tmp_path, mobile_sam_checkpoint, trained_clip_dir, capsys):
    import json

    from PIL import Image

    from grounded.cli import main

    scene = _scene(1001, [("red", "circle"), ("red", "square"), ("blue", "circle")])
    path = tmp_path / "shapes.png"
    Image.fromarray(scene.image).save(path)
    code = main(["segment", str(path), "--text", "a red circle", "--mode", "clip", "--clip", str(trained_clip_dir),
                 "--model", str(mobile_sam_checkpoint), "--points-per-side", "8", "--out", str(tmp_path / "out"),
                 "--format", "coco", "--no-progress"])
    assert code == 0
    assert "1 masks" in capsys.readouterr().out
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    from pycocotools import mask as mask_utils

    rle = coco["annotations"][0]["segmentation"]
    mask = mask_utils.decode(dict(rle, counts=rle["counts"].encode())).astype(bool)
    assert iou(mask, scene.masks[0]) > 0.8
    assert (tmp_path / "out" / "overlays" / "shapes.png").is_file()
    assert main(["segment", str(path), "--text", "a red circle", "--box", "1,1,5,5"]) != 0
    assert "--text takes --point" in capsys.readouterr().err
    assert main(["segment", str(path), "--text", "?!"]) != 0
    assert "only punctuation" in capsys.readouterr().err


def test_clip_pipeline_spec_over_a_manifest(tmp_path, mobile_sam_checkpoint, trained_clip_dir):
    import json

    from PIL import Image
    from pycocotools import mask as mask_utils

    from grounded.pipeline import load_pipeline

    scene = _scene(1002, [("red", "circle"), ("red", "square"), ("blue", "circle")])
    Image.fromarray(scene.image).save(tmp_path / "a.png")
    ys, xs = np.nonzero(scene.masks[0])
    item = {"image": str(tmp_path / "a.png"), "text": "a red circle", "points": [[float(xs.mean()), float(ys.mean()), 1]]}
    (tmp_path / "items.jsonl").write_text(json.dumps(item) + "\n")
    pipe = load_pipeline(ROOT / "pipelines" / "text_to_mask_clip.yaml",
                         [f"clip={trained_clip_dir}", f"sam={mobile_sam_checkpoint}", "device=cpu", "points_per_side=8"])
    report = pipe.run(str(tmp_path / "items.jsonl"), tmp_path / "out", progress=False)
    assert (report.ok, report.errors) == (1, 0), report.error_rows
    coco = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert len(coco["annotations"]) == 1
    rle = coco["annotations"][0]["segmentation"]
    mask = mask_utils.decode(dict(rle, counts=rle["counts"].encode())).astype(bool)
    assert iou(mask, scene.masks[0]) > 0.8

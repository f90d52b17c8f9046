"""Grounding DINO through transformers, and the `detect` node: a tiny random model built from a
config, saved, and loaded back by folder and by hub id; the node's output against transformers'
own post-processing on the same weights; prompts and bad input."""

import json
import shutil

import numpy as np
import pytest
import torch

from grounded.detect import load_detector, parse_prompt
from grounded.detect.phrases import token_classes
from grounded.nodes.detect import Detect
from grounded.pipeline import ModelCache, Pipeline
from grounded.testing.dino import BERT_BASE_IDS, PROMPT_CORPUS, tiny_hf, tiny_text_encoder
from grounded.testing.hf_cache import install_in_hf_cache, point_hf_cache_at
from grounded.testing.tokenizers import assert_no_unknown_tokens
from grounded.types import Sample

PROMPT = "dog. cat. red car."
SIZE = dict(size=64, max_size=100)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_hf(tmp_path_factory.mktemp("gdino") / "tiny-grounding-dino", seed=1)


@pytest.fixture(scope="module")
def detector(hf_folder):
    return load_detector(hf_folder, **SIZE)


def images(seed=0, shapes=((60, 80), (72, 50))):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def reference(detector, imgs, text, box_threshold, text_threshold):
    """transformers' own pipeline: processor -> model -> post_process_grounded_object_detection."""
    proc = detector.processor
    inputs = proc(images=imgs, text=[text] * len(imgs), return_tensors="pt",
                  images_kwargs={"size": {"shortest_edge": SIZE["size"], "longest_edge": SIZE["max_size"]}})
    with torch.no_grad():
        outputs = detector.model(**inputs)
    return proc.post_process_grounded_object_detection(outputs, inputs.input_ids, threshold=box_threshold,
                                                       text_threshold=text_threshold,
                                                       target_sizes=[im.shape[:2] for im in imgs])


def clean(phrase):
    """A reference phrase without the special tokens and separators the node leaves out."""
    for token in ("[CLS]", "[SEP]", "[PAD]", "."):
        phrase = phrase.replace(token, " ")
    return " ".join(phrase.split())


def test_prompt_classes_and_caption():
    p = parse_prompt("Dog.  cat . red   car.")
    assert p.classes == ("dog", "cat", "red car")
    assert p.caption == "dog . cat . red car ."
    assert parse_prompt(["dog", "Red car"]).classes == ("dog", "red car")
    assert [p.caption[a:b] for a, b in p.spans] == ["dog", "cat", "red car"]


@pytest.mark.parametrize("text", ["", "   ", ".", " . . ", "?!", "dog. ,,. cat", None])
def test_bad_prompts_are_value_errors(text):
    with pytest.raises(ValueError, match="prompt"):
        parse_prompt(text)


def test_tokenizer_knows_the_prompt_words_and_bert_base_special_ids(tmp_path):
    tok = tiny_text_encoder(tmp_path / "bert")
    assert_no_unknown_tokens(tok, PROMPT_CORPUS)
    for token, idx in BERT_BASE_IDS.items():
        assert tok.convert_tokens_to_ids(token) == idx
    prompt = parse_prompt(PROMPT)
    enc = tok(prompt.caption, return_offsets_mapping=True)
    classes = token_classes(prompt, enc["offset_mapping"])
    words = tok.convert_ids_to_tokens(enc["input_ids"])
    assert words == ["[CLS]", "dog", ".", "cat", ".", "red", "car", ".", "[SEP]"]
    assert classes.tolist() == [-1, 0, -1, 1, -1, 2, 2, -1, -1]


def test_detector_equals_transformers_post_processing(detector):
    imgs = images()
    for box_threshold in (0.3, 0.9):
        ours = detector.detect(imgs, PROMPT, box_threshold=box_threshold, text_threshold=0.25)
        ref = reference(detector, imgs, PROMPT, box_threshold, 0.25)
        assert len(ours) == 2
        for dets, r, im in zip(ours, ref, imgs):
            assert len(dets) == len(r["scores"]) > 0
            np.testing.assert_allclose(dets.xyxy, r["boxes"].numpy(), rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(dets.scores, r["scores"].numpy(), rtol=1e-6, atol=1e-6)
            assert dets.data["phrase"] == [clean(t) for t in r["text_labels"]]
            assert dets.image_size == im.shape[:2]
            assert set(dets.labels) <= {"dog", "cat", "red car"}
    # a stricter threshold keeps a strict subset: the thresholds are doing something
    assert 0 < len(detector.detect(imgs[0], PROMPT, box_threshold=0.9)[0]) < len(detector.detect(imgs[0], PROMPT)[0])


def test_class_of_each_detection_is_its_best_prompt_class(detector):
    img = images()[0]
    dets = detector.detect(img, PROMPT, box_threshold=0.3)[0]
    prompt = parse_prompt(PROMPT)
    pv, pm = detector.prepare([img])
    logits, _ = detector.forward(pv, pm, [prompt.caption])
    tokens = detector.tokenize([prompt.caption])
    classes = token_classes(prompt, tokens["offset_mapping"][0])
    probs = logits[0].sigmoid()
    kept = probs.max(-1).values > 0.3
    per_class = torch.stack([probs[kept][:, :len(classes)][:, torch.from_numpy(classes == k)].max(-1).values
                             for k in range(3)], -1)
    assert dets.class_id.tolist() == per_class.argmax(-1).tolist()
    assert dets.labels == [prompt.classes[k] for k in dets.class_id]


def test_no_detection_above_threshold_is_an_empty_result(detector):
    dets = detector.detect(images()[0], PROMPT, box_threshold=0.99999)[0]
    assert len(dets) == 0 and dets.image_size == (60, 80) and dets.xyxy.shape == (0, 4)
    assert dets.labels == [] and len(dets.scores) == len(dets.class_id) == 0 and dets.data["phrase"] == []


def test_nms_removes_overlaps(detector):
    img = images()[0]
    plain = detector.detect(img, PROMPT, box_threshold=0.3)[0]
    kept = detector.detect(img, PROMPT, box_threshold=0.3, nms=0.05)[0]  # random boxes barely overlap
    expected = plain.nms(0.05, class_agnostic=True)
    assert 0 < len(kept) == len(expected) < len(plain)
    np.testing.assert_array_equal(kept.xyxy, expected.xyxy)


def test_node_in_a_pipeline_batches_and_maps_classes(hf_folder, detector):
    imgs = images()
    with ModelCache() as models:
        pipe = Pipeline([Detect(model=str(hf_folder), device="cpu", box_threshold=0.3, **SIZE)],
                        inputs=["image", "text"], batch_size=2)
        out = pipe.process([Sample(image=im, text=PROMPT) for im in imgs], models=models)
        assert len(models) == 1
    direct = detector.detect(imgs, PROMPT, box_threshold=0.3)
    for sample, dets in zip(out, direct):
        np.testing.assert_array_equal(sample.detections.xyxy, dets.xyxy)
        assert sample.detections.labels == dets.labels
    # the prompt parameter replaces the items' text
    with ModelCache() as models:
        node = Detect(model=str(hf_folder), device="cpu", prompt=PROMPT, **SIZE)
        assert node.reads == {"image": np.ndarray}
        sample = Pipeline([node]).process([imgs[0]], models=models)[0]
    # (alone, not padded to the batch's largest image, so not the batched result)
    np.testing.assert_array_equal(sample.detections.scores, detector.detect(imgs[0], PROMPT)[0].scores)


def test_node_bad_input(hf_folder):
    with pytest.raises(ValueError, match="empty detection prompt"):
        Detect(model=str(hf_folder), prompt=" ")
    with pytest.raises(ValueError, match="no word"):
        Detect(model=str(hf_folder), prompt="...?")
    with pytest.raises(ValueError, match="box_threshold"):
        Detect(model=str(hf_folder), box_threshold=1.5)
    with ModelCache() as models:
        pipe = Pipeline([Detect(model=str(hf_folder), device="cpu", **SIZE)], inputs=["image", "text"])
        with pytest.raises(ValueError, match="prompt"):
            pipe.process([Sample(image=images()[0], text=" . ")], models=models)


def test_empty_text_none_gives_no_detections_to_an_item_whose_text_names_nothing(hf_folder, detector):
    imgs = images()[:2]
    with ModelCache() as models:
        pipe = Pipeline([Detect(model=str(hf_folder), device="cpu", box_threshold=0.3, empty_text="none", **SIZE)],
                        inputs=["image", "text"], batch_size=3)
        out = pipe.process([Sample(image=imgs[0], text=" . "), Sample(image=imgs[1], text=PROMPT),
                            Sample(image=imgs[0])], models=models)
    assert len(out[0].detections) == 0 and len(out[2].detections) == 0  # an image without tags: no labels
    assert out[0].detections.image_size == imgs[0].shape[:2]
    np.testing.assert_array_equal(out[1].detections.scores, detector.detect(imgs[1], PROMPT, box_threshold=0.3)[0].scores)


def test_load_by_hub_id_from_the_cache(hf_folder, detector, tmp_path, monkeypatch):
    cache = install_in_hf_cache(hf_folder, tmp_path / "hub", "test-org/tiny-grounding-dino")
    point_hf_cache_at(monkeypatch, cache)
    by_id = load_detector("test-org/tiny-grounding-dino", **SIZE)
    img = images()[0]
    a, b = by_id.detect(img, PROMPT)[0], detector.detect(img, PROMPT)[0]
    np.testing.assert_array_equal(a.xyxy, b.xyxy)
    with pytest.raises(FileNotFoundError, match="test-org/absent"):
        load_detector("test-org/absent")


def test_weights_that_do_not_match_the_config(hf_folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(hf_folder, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["decoder_layers"] += 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"do not fit its config.json: 36 missing \(model\.decoder\.layers\.2\."):
        load_detector(bad)
    cfg["decoder_layers"] -= 1
    cfg["num_queries"] += 5
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="query_position_embeddings"):
        load_detector(bad)


def test_too_long_prompt_and_bad_images(detector):
    with pytest.raises(ValueError, match="too long: 452 tokens"):
        detector.detect(images()[0], ". ".join(["red car"] * 150))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((8, 8), np.uint8), PROMPT)
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        detector.detect([images()[0]], [PROMPT, PROMPT])


def test_bf16_autocast(hf_folder, detector):
    half = load_detector(hf_folder, dtype=torch.bfloat16, **SIZE)
    assert half.autocast_dtype == torch.bfloat16
    img = images()[0]
    a, b = half.detect(img, PROMPT, box_threshold=0.0)[0], detector.detect(img, PROMPT, box_threshold=0.0)[0]
    assert len(a) == len(b) == 30  # every query, in the same order
    assert 0 < np.abs(a.scores - b.scores).max() < 0.1  # bf16 did run, and stays close


def test_detect_from_a_spec_with_an_official_style_switch(hf_folder, detector):
    from grounded.pipeline.spec import parse_pipeline

    spec = f"""
version: 1
nodes:
  - node: detect
    params:
      model: {hf_folder}
      prompt: "dog. cat. red car."
      box_threshold: 0.5
      nms: 0.05
      size: 64
      max_size: 100
      device: cpu
"""
    pipe = parse_pipeline(spec)
    img = images()[0]
    with ModelCache() as models:
        dets = pipe.process([img], models=models)[0].detections
    expected = detector.detect(img, PROMPT, box_threshold=0.5, nms=0.05)[0]
    assert len(dets) == len(expected) > 0
    np.testing.assert_array_equal(dets.xyxy, expected.xyxy)
    with pytest.raises(ValueError, match="text_encoder is for official checkpoints"):
        parse_pipeline(spec.replace("device: cpu", "device: cpu\n      text_encoder: somewhere"))


def test_a_bfloat16_save_loads_in_float32_unless_asked(hf_folder, tmp_path):
    """transformers 5 keeps a checkpoint's saved dtype; the detector asks for float32 (bf16 and fp16
    run under autocast over it)."""
    from transformers import GroundingDinoForObjectDetection

    from grounded.testing.bf16 import bfloat16_copy

    folder = bfloat16_copy(hf_folder, tmp_path / "bf16")
    assert next(GroundingDinoForObjectDetection.from_pretrained(folder).parameters()).dtype == torch.bfloat16
    for dtype in (None, torch.bfloat16):
        det = load_detector(folder, dtype=dtype, **SIZE)
        assert {p.dtype for p in det.model.parameters()} == {torch.float32}
        assert len(det.detect(images()[0], PROMPT, box_threshold=0.0)[0]) == 30

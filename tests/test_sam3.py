"""SAM 3 (grounded.sam3) against transformers' own Sam3Model / Sam3TrackerModel and their
processors, on a tiny random checkpoint laid out like facebook/sam3 (grounded.testing.sam3):
loading by folder and by hub id offline, concept segmentation equal to
`post_process_instance_segmentation` with many instances kept, one encoding per image whatever the
phrases, the tracker equal to Sam3TrackerModel's, a corrective click on a concept result, bad input."""

import time

import numpy as np
import pytest
import torch

from grounded.sam3 import Concept, correct_with_clicks, load_sam3, mask_prompt
from grounded.testing.hf_cache import install_in_hf_cache, point_hf_cache_at
from grounded.testing.sam3 import NUM_QUERIES, tiny_sam3, tiny_sam3_detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PHRASES = ["a dog", "red car", "cat", "the tree", "a mug"]
# With the tiny random weights most scores lie in 0.2-0.26: 0.22 keeps most (not all) of each image's queries.
THRESHOLD = 0.22


@pytest.fixture(scope="module")
def sam3_dir(tmp_path_factory):
    return tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3")


@pytest.fixture(scope="module")
def sam3(sam3_dir):
    return load_sam3(sam3_dir, device="cpu")


@pytest.fixture(scope="module")
def reference(sam3_dir):
    """transformers' own models and processors, loaded by their own from_pretrained."""
    from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3TrackerProcessor

    detector, info = Sam3Model.from_pretrained(sam3_dir, output_loading_info=True)
    tracker, tracker_info = Sam3TrackerModel.from_pretrained(sam3_dir, output_loading_info=True)
    for report in (info, tracker_info):  # the tiny checkpoint loads completely both ways
        assert not (report["missing_keys"] or report["unexpected_keys"] or report["mismatched_keys"])
    return dict(detector=detector.eval(), processor=Sam3Processor.from_pretrained(sam3_dir), tracker=tracker.eval(),
                tracker_processor=Sam3TrackerProcessor.from_pretrained(sam3_dir))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(90, 130), (70, 60), (120, 100)]]


@pytest.fixture
def encoder_calls(sam3):
    """The number of images each vision-encoder call of `sam3` encoded, in order (cache emptied first)."""
    calls = []
    sam3.clear_cache()
    hook = sam3.detector.vision_encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    yield calls
    hook.remove()


def reference_instances(reference, image, phrases, threshold, mask_threshold=0.5, boxes=None, labels=None):
    """transformers' concept output for one image: the image repeated per phrase (that is how
    Sam3Model takes several phrases), post_process_instance_segmentation, concatenated."""
    processor, model = reference["processor"], reference["detector"]
    kwargs = {} if boxes is None else dict(input_boxes=[boxes], input_boxes_labels=[labels])
    inputs = processor(images=image, text=phrases, return_tensors="pt", **kwargs)
    n = len(phrases) if isinstance(phrases, list) else 1
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"].expand(n, -1, -1, -1), input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"], input_boxes=inputs.get("input_boxes"),
                    input_boxes_labels=inputs.get("input_boxes_labels"))
    results = processor.post_process_instance_segmentation(out, threshold=threshold, mask_threshold=mask_threshold,
                                                           target_sizes=[image.shape[:2]] * n)
    return [{k: v.numpy() for k, v in r.items()} for r in results]


def assert_same_instances(dets, expected, labels):
    """Detections equal to transformers' results (one dict per phrase, in order)."""
    scores = np.concatenate([r["scores"] for r in expected])
    assert len(dets) == len(scores)
    np.testing.assert_allclose(dets.scores, scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dets.xyxy, np.concatenate([r["boxes"] for r in expected]), rtol=0, atol=1e-4)
    assert np.array_equal(dets.mask, np.concatenate([r["masks"] for r in expected]).astype(bool))
    assert dets.labels == [label for label, r in zip(labels, expected) for _ in r["scores"]]
    assert dets.class_id.tolist() == [k for k, r in enumerate(expected) for _ in r["scores"]]


# ---- loading ------------------------------------------------------------------------------------

def test_loads_by_folder_and_by_hub_id_from_the_cache_offline(sam3_dir, sam3, tmp_path, monkeypatch, images):
    from grounded.nodes.sam3 import sam3_model  # registers the "sam3" model kind
    from grounded.pipeline.models import ModelCache

    cache = install_in_hf_cache(sam3_dir, tmp_path / "hub", "facebook/sam3")
    point_hf_cache_at(monkeypatch, cache)  # HF_HUB_OFFLINE=1, this cache only
    with ModelCache() as models:
        by_id = sam3_model(models, "facebook/sam3", "cpu")
        assert sam3_model(models, "facebook/sam3", "cpu") is by_id and len(models) == 1
        assert by_id.folder.startswith(str(cache / "models--facebook--sam3" / "snapshots"))
        for ours, theirs in ((by_id.detector, sam3.detector), (by_id.tracker, sam3.tracker)):
            mine, other = ours.state_dict(), theirs.state_dict()
            assert mine.keys() == other.keys() and all(torch.equal(mine[k], other[k]) for k in mine)
        assert by_id.segment([images[0]], [["cat"]], threshold=THRESHOLD)[0] == \
            sam3.segment([images[0]], [["cat"]], threshold=THRESHOLD)[0]


def test_the_tracker_is_built_on_the_concept_models_backbone(sam3, reference):
    backbone = sam3.detector.vision_encoder.backbone
    assert sam3.tracker.vision_encoder.backbone is backbone  # one module: loaded once, run once per image
    assert sam3.tracker.vision_encoder.neck is not sam3.detector.vision_encoder.neck  # the tracker's own neck
    ours, theirs = sam3.tracker.state_dict(), reference["tracker"].state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    pointers = {p.data_ptr() for p in [*sam3.detector.parameters(), *sam3.tracker.parameters()]}
    assert len(pointers) == len({*sam3.detector.parameters(), *sam3.tracker.parameters()})


def test_missing_weights_name_what_was_tried_and_the_gated_hub(tmp_path, monkeypatch):
    point_hf_cache_at(monkeypatch, tmp_path / "empty-hub")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        load_sam3("facebook/sam3", device="cpu")
    message = str(err.value)
    assert time.perf_counter() - start < 10
    assert "'facebook/sam3'" in message and str(tmp_path / "empty-hub") in message and "Tried" in message
    assert "gated" in message and "request access at https://huggingface.co/facebook/sam3" in message
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load_sam3(str(tmp_path / "no-such-folder"), device="cpu")


def test_a_checkpoint_of_another_type_is_named(tmp_path):
    (tmp_path / "sam2").mkdir()
    (tmp_path / "sam2" / "config.json").write_text('{"model_type": "sam2", "architectures": ["Sam2Model"]}')
    with pytest.raises(ValueError, match=r"'sam2' checkpoint \(Sam2Model\), not SAM 3"):
        load_sam3(tmp_path / "sam2", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_sam3(tmp_path / "empty", device="cpu")


def test_a_concept_only_checkpoint_segments_and_says_it_has_no_tracker(tmp_path, images):
    concept_only = load_sam3(tiny_sam3_detector(tmp_path / "detector"), device="cpu")
    assert concept_only.tracker is None
    assert len(concept_only.segment([images[0]], [["cat"]], threshold=0.0)[0]) == NUM_QUERIES
    with pytest.raises(ValueError, match="no interactive tracker.*facebook/sam3"):
        concept_only.predictor()


def test_dtype_casts_both_models(sam3_dir, images):
    half = load_sam3(sam3_dir, device="cpu", dtype="bf16")
    assert {p.dtype for p in [*half.detector.parameters(), *half.tracker.parameters()]} == {torch.bfloat16}
    dets = half.segment([images[0]], [["cat"]], threshold=0.0)[0]
    assert len(dets) == NUM_QUERIES and dets.scores.dtype == np.float32
    predictor = half.predictor()
    predictor.set_image(images[0])
    assert predictor.predict(np.array([[30, 40]]), np.array([1]))[0].shape == (3, 90, 130)


# ---- concept segmentation -----------------------------------------------------------------------

def test_concepts_equal_transformers_post_processing(sam3, reference, images):
    found = sam3.segment(images, [PHRASES] * len(images), threshold=THRESHOLD, mask_threshold=0.5)
    for image, dets in zip(images, found):
        assert 20 <= len(dets) < NUM_QUERIES * len(PHRASES)  # the thresholds keep many, not all
        area = dets.area / (image.shape[0] * image.shape[1])
        assert 0.05 < area.mean() < 0.95  # masks are neither empty nor full
        assert dets.image_size == image.shape[:2] and len(dets.rles) == len(dets)
        assert_same_instances(dets, reference_instances(reference, image, PHRASES, THRESHOLD), PHRASES)


@pytest.mark.parametrize("text, labels, threshold", [("a mug", [1, 0], THRESHOLD), (None, [1, 1], 0.21)])
def test_exemplar_boxes_equal_transformers(sam3, reference, images, text, labels, threshold):
    boxes = [[10, 10, 40, 50], [50, 20, 90, 60]]
    dets = sam3.segment([images[0]], [[Concept(text, boxes=boxes, labels=labels)]], threshold=threshold)[0]
    assert len(dets) >= 20
    expected = reference_instances(reference, images[0], text, threshold, boxes=boxes, labels=labels)
    assert_same_instances(dets, expected, [text or "visual"])


def test_n_phrases_in_one_call_equal_n_calls_and_encode_the_image_once(sam3, images, encoder_calls):
    together = sam3.segment([images[0]], [PHRASES], threshold=THRESHOLD)[0]
    alone = [sam3.segment([images[0]], [[p]], threshold=THRESHOLD)[0] for p in PHRASES]
    assert encoder_calls == [1]  # five phrases, six calls: one encoding
    assert len(together) >= 20
    expected = [{"scores": d.scores, "boxes": d.xyxy, "masks": d.mask} for d in alone]
    assert_same_instances(together, expected, PHRASES)


def test_a_batch_with_different_phrase_counts_equals_one_by_one(sam3, images, encoder_calls):
    prompts = [PHRASES[:1], PHRASES[1:4], PHRASES[3:]]
    sam3.cache_size = 3
    try:
        batch = sam3.segment(images, prompts, threshold=THRESHOLD, batch_size=3, image_batch_size=3)
        assert encoder_calls == [3]  # the three images in one encoder batch
        sam3.clear_cache()
        for image, phrases, dets in zip(images, prompts, batch):
            one = sam3.segment([image], [phrases], threshold=THRESHOLD, batch_size=1)[0]
            expected = [{"scores": d.scores, "boxes": d.xyxy, "masks": d.mask} for d in
                        (one[one.class_id == k] for k in range(len(phrases)))]
            assert_same_instances(dets, expected, phrases)
    finally:
        sam3.cache_size = 2


def test_no_instance_above_the_threshold_is_an_empty_result(sam3, images):
    found = sam3.segment(images[:2], [["cat"], []], threshold=1.0)
    for image, dets in zip(images, found):
        assert len(dets) == 0 and dets.has_masks and dets.image_size == image.shape[:2]


@pytest.mark.parametrize("prompts, message", [
    ([[""]], "the phrase is empty"),
    ([["   "]], "the phrase is empty"),
    ([["?!..."]], "only punctuation"),
    ([[Concept("cat", boxes=[[10, 10, 200, 50]])]], r"outside the 130x90 image"),
    ([[Concept("cat", boxes=[[-1, 10, 20, 50]])]], r"outside the 130x90 image"),
    ([[Concept("cat", boxes=[[40, 10, 20, 50]])]], "x1 < x0"),
    ([[Concept("cat", boxes=[[10, 10, 10, 50]])]], "no area"),
    ([[Concept("cat", boxes=[[10, 10, 20, 50]], labels=[2])]], "label is 1"),
    ([[Concept()]], "needs a phrase, exemplar boxes, or both"),
    ([["cat"], ["dog"]], "2 prompt entries for 1 images"),
    ("cat", "1 prompt entries for 1 images"),
    ([[3]], "a concept is a phrase"),
])
def test_bad_prompts_are_refused_with_clear_messages(sam3, images, prompts, message, encoder_calls):
    with pytest.raises(ValueError, match=message):
        sam3.segment([images[0]], prompts)
    assert encoder_calls == []  # refused before any encoding


def test_thresholds_are_probabilities(sam3, images):
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        sam3.segment([images[0]], [["cat"]], threshold=1.5)


# ---- the interactive tracker ---------------------------------------------------------------------

def reference_track(reference, image, multimask=True, input_masks=None, **prompts):
    processor, model = reference["tracker_processor"], reference["tracker"]
    inputs = processor(images=image, return_tensors="pt", **prompts)
    with torch.no_grad():
        out = model(**{k: v for k, v in inputs.items() if k != "original_sizes"}, input_masks=input_masks,
                    multimask_output=multimask)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].numpy()
    return masks, out.iou_scores[0].numpy(), out.pred_masks[0].numpy()


def test_the_predictor_equals_sam3_tracker_model(sam3, reference, images):
    image = images[0]
    predictor = sam3.predictor()
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(np.array([[30, 40], [60, 20]]), np.array([1, 0]))
    ref = reference_track(reference, image, input_points=[[[[30, 40], [60, 20]]]], input_labels=[[[1, 0]]])
    assert masks.shape == (3, 90, 130) and low_res.shape == (3, 32, 32)
    assert np.array_equal(masks, ref[0][0]) and 0.05 < masks.mean() < 0.95
    np.testing.assert_allclose(scores, ref[1][0], atol=1e-6)
    np.testing.assert_allclose(low_res, ref[2][0], atol=1e-5)

    boxes = np.array([[10, 10, 40, 50], [50, 20, 90, 60], [0, 0, 130, 90]])
    many = predictor.predict_many(boxes=boxes)
    ref = reference_track(reference, image, input_boxes=[boxes.tolist()])
    assert np.array_equal(many[0], ref[0]) and many[0].shape == (3, 3, 90, 130)
    np.testing.assert_allclose(many[1], ref[1], atol=1e-6)

    mask_input = low_res[:1]  # the previous output as a mask prompt, one mask out
    one = predictor.predict(np.array([[30, 40]]), np.array([1]), box=[20, 30, 70, 80], mask_input=mask_input,
                            multimask_output=False)
    ref = reference_track(reference, image, multimask=False, input_masks=torch.from_numpy(mask_input)[None],
                          input_points=[[[[30, 40]]]], input_labels=[[[1]]], input_boxes=[[[20, 30, 70, 80]]])
    assert one[0].shape == (1, 90, 130) and np.array_equal(one[0], ref[0][0])
    np.testing.assert_allclose(one[1], ref[1][0], atol=1e-6)


def test_bad_prompts_to_the_predictor(sam3, images):
    from grounded.sam import PromptError

    predictor = sam3.predictor()
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(np.array([[1, 1]]), np.array([1]))
    predictor.set_image(images[0])
    for kwargs, message in [
        (dict(point_coords=np.array([[200, 10]]), point_labels=np.array([1])), "outside the 130x90 image"),
        (dict(point_coords=np.array([[20, 10]])), "point_labels must be supplied"),
        (dict(point_coords=np.array([[20, 10]]), point_labels=np.array([1, 0])), "one label per point"),
        (dict(point_coords=np.array([[20, 10]]), point_labels=np.array([3])), "point labels are 1"),
        (dict(box=[40, 10, 20, 50]), "x1 < x0"),
        (dict(mask_input=np.zeros((1, 256, 256))), r"mask_input must be Nx1x32x32"),
    ]:
        with pytest.raises(PromptError, match=message):
            predictor.predict(**kwargs)
    masks, scores, low_res = predictor.predict_many(boxes=np.zeros((0, 4)))  # no prompts: no masks
    assert masks.shape == (0, 3, 90, 130) and scores.shape == (0, 3) and low_res.shape == (0, 3, 32, 32)
    with pytest.raises(PromptError, match="prompt counts differ"):
        predictor.predict_many(boxes=np.array([[1, 1, 5, 5]] * 2), point_coords=np.zeros((3, 1, 2)),
                               point_labels=np.ones((3, 1)))


def test_a_corrective_click_prompts_the_tracker_with_the_results_mask(sam3, reference, images, encoder_calls):
    image = images[0]
    dets = sam3.segment([image], [["cat", "a dog"]], threshold=0.245)[0]
    assert len(dets) >= 2
    target = int(np.argmin(dets.area))  # a click inside the smallest mask belongs to it
    ys, xs = np.nonzero(dets.mask_of(target))
    click = [float(xs[len(xs) // 2]), float(ys[len(ys) // 2]), 0]
    fixed = correct_with_clicks(sam3.predictor(), image, dets, [click])
    assert encoder_calls == [1]  # the click reused the concept call's encoding

    prompt = mask_prompt(dets.mask_of(target), (32, 32))
    expected, iou, _ = reference_track(reference, image, multimask=False, input_masks=torch.from_numpy(prompt)[None],
                                       input_points=[[[click[:2]]]], input_labels=[[[0]]])
    assert np.array_equal(fixed.mask_of(target), expected[0, 0])
    assert fixed.data["refined"].tolist() == [i == target for i in range(len(dets))]
    np.testing.assert_allclose(fixed.data["mask_score"][target], iou[0, 0], atol=1e-6)
    others = [i for i in range(len(dets)) if i != target]
    assert [fixed.rles[i] for i in others] == [dets.rles[i] for i in others]
    assert fixed.labels == dets.labels and np.array_equal(fixed.scores, dets.scores)
    with pytest.raises(ValueError, match="must lie inside the 130x90 image"):
        correct_with_clicks(sam3.predictor(), image, dets, [[130, 5, 1]])


def assert_same_correction(first, second):
    """Two click-corrected results alike (unrefined rows have no mask score: NaN)."""
    assert first.rles == second.rles and first.labels == second.labels
    assert first.data["refined"].tolist() == second.data["refined"].tolist()
    assert np.array_equal(first.data["mask_score"], second.data["mask_score"], equal_nan=True)


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad, torch.enable_grad])
def test_every_entry_point_under_each_grad_mode(sam3_dir, sam3, images, mode):
    """A model loaded under each mode, used under it and then in grad mode (its features cached
    under the first mode serve the second), gives what the module's model gives in grad mode."""
    from grounded.sam3 import segment_concepts

    image, boxes = images[1], np.array([[10, 10, 40, 50], [30, 20, 55, 60]])

    def every_entry_point(model, grad_mode):
        with grad_mode():
            dets = model.segment([image], [["cat"]], threshold=THRESHOLD)[0]
            exemplars = segment_concepts(model, [image], [[Concept("cat", boxes=boxes[:1])]], threshold=THRESHOLD)[0]
            predictor = model.predictor()
            predictor.set_image(image)
            masks, scores, _ = predictor.predict(np.array([[30, 40]]), np.array([1]))
            many, many_scores, _ = predictor.predict_many(boxes=boxes)
            fixed = correct_with_clicks(predictor, image, dets, [[30, 40, 1]])
        assert len(dets) and len(exemplars) and masks.any() and many.any()
        assert not isinstance(scores, torch.Tensor) and not isinstance(many_scores, torch.Tensor)
        return dets, exemplars, masks, scores, many, many_scores, fixed

    with mode():
        loaded = load_sam3(sam3_dir, device="cpu")
    sam3.clear_cache()
    expected = every_entry_point(sam3, torch.enable_grad)
    for outer in (mode, torch.enable_grad):
        got = every_entry_point(loaded, outer)
        assert got[0] == expected[0] and got[1] == expected[1]
        for ours, theirs in zip(got[2:6], expected[2:6]):
            np.testing.assert_array_equal(ours, theirs)
        assert_same_correction(got[6], expected[6])

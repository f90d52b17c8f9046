"""SAM 2.1 for images against the official `sam2` (1.1.0) on the same random weights: the image
encoder, every prompt form of SAM2ImagePredictor, the batch API, the mask generator; loading in the
official layout; refusals; hole filling against scipy."""

import numpy as np
import pytest
import torch

from grounded.sam.checkpoint import CheckpointError
from grounded.sam.predictor import PromptError
from grounded.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, Sam2Config, build_sam2, from_pretrained
from grounded.sam2.build import IMAGE_PREFIXES, VIDEO_PREFIXES
from sam2_reference import SIZE_CONFIGS, TINY_HIERA, meta_model, official_model, save_official

TOL = dict(rtol=1e-4, atol=1e-4)  # the fp32 tolerances of the SAM 1 path matrix


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The official model (tiny Hiera, SAM 2.1 config) and grounded's, loaded from its checkpoint file."""
    reference = official_model(trunk=TINY_HIERA)
    path = save_official(reference, tmp_path_factory.mktemp("sam2") / "tiny_sam2.1.pt")
    ours = from_pretrained(path, config=Sam2Config(**TINY_HIERA))
    yield reference, ours, path
    path.unlink()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)  # not square


@pytest.fixture(scope="module")
def predictors(models, image):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    reference, ours, _ = models
    official, grounded = Official(reference), SAM2ImagePredictor(ours)
    official.set_image(image)
    grounded.set_image(image)
    return official, grounded


def _same_prediction(a, b, tol=TOL):
    masks_a, scores_a, low_a = a
    masks_b, scores_b, low_b = b
    assert masks_a.shape == masks_b.shape and scores_a.shape == scores_b.shape and low_a.shape == low_b.shape
    if masks_a.dtype == bool:
        assert (masks_a != masks_b).mean() < 1e-4  # pixels whose logit sits on the threshold may flip
    else:  # return_logits
        np.testing.assert_allclose(masks_b, masks_a, **tol)
    np.testing.assert_allclose(scores_b, scores_a, **tol)
    np.testing.assert_allclose(low_b, low_a, **tol)


def test_image_embeddings_and_high_res_features_equal_the_official(models, predictors):
    reference, ours, _ = models
    official, grounded = predictors
    torch.testing.assert_close(grounded.get_image_embedding(), official.get_image_embedding(), **TOL)
    for mine, theirs in zip(grounded.high_res_features, official._features["high_res_feats"]):
        torch.testing.assert_close(mine, theirs, **TOL)
    assert grounded.get_image_embedding().abs().max() > 0.1  # random, not degenerate


CASES = {
    "point": dict(point_coords=np.array([[100, 120]]), point_labels=np.array([1])),
    "points_with_background": dict(point_coords=np.array([[100, 120], [300, 200]]), point_labels=np.array([1, 0])),
    "point_single_mask": dict(point_coords=np.array([[100, 120]]), point_labels=np.array([1]), multimask_output=False),
    "box": dict(box=np.array([50, 60, 300, 250])),
    "point_and_box": dict(point_coords=np.array([[100, 120]]), point_labels=np.array([1]),
                          box=np.array([50, 60, 300, 250]), multimask_output=False),
    "many_boxes": dict(box=np.array([[50, 60, 300, 250], [10, 10, 100, 100], [0, 0, 420, 300]])),
    "logits": dict(point_coords=np.array([[400, 10]]), point_labels=np.array([1]), return_logits=True),
    "normalised": dict(point_coords=np.array([[0.25, 0.5]]), point_labels=np.array([1]), normalize_coords=False),
}


@pytest.mark.parametrize("case", CASES)
def test_predict_equals_the_official(predictors, case):
    official, grounded = predictors
    _same_prediction(official.predict(**CASES[case]), grounded.predict(**CASES[case]))


def test_mask_input_equals_the_official(predictors):
    official, grounded = predictors
    click = dict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]))
    _, _, low_res = official.predict(**click, multimask_output=False)
    for multimask in (True, False):
        _same_prediction(official.predict(**click, mask_input=low_res, multimask_output=multimask),
                         grounded.predict(**click, mask_input=low_res, multimask_output=multimask))


def test_single_mask_falls_back_to_the_best_multimask_output_when_unstable(models):
    """The dynamic multimask fallback, on the decoder directly: unstable single-mask logits give way."""
    _, ours, _ = models
    decoder = ours.sam_mask_decoder
    logits = torch.zeros(2, 4, 8, 8)
    logits[0, 0] = 5.0  # stable single mask
    logits[1, 0] = torch.linspace(-0.04, 0.04, 64).view(8, 8)  # within +-delta: unstable
    logits[1, 2] = 7.0
    iou = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.9, 0.3]])
    masks, scores = decoder.select_masks(logits, iou, multimask_output=False)
    assert torch.equal(masks[0, 0], logits[0, 0]) and scores[0, 0] == 0.1
    assert torch.equal(masks[1, 0], logits[1, 2]) and scores[1, 0] == pytest.approx(0.9)


def test_set_image_batch_and_predict_batch_equal_the_official(models, image):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    reference, ours, _ = models
    images = [image, np.ascontiguousarray(image[:200, :150])]
    official, grounded = Official(reference), SAM2ImagePredictor(ours)
    official.set_image_batch(images)
    grounded.set_image_batch(images)
    prompts = dict(point_coords_batch=[np.array([[50, 60]]), np.array([[20, 30], [100, 100]])],
                   point_labels_batch=[np.array([1]), np.array([1, 0])],
                   box_batch=[np.array([10, 20, 200, 250]), None])
    theirs, mine = official.predict_batch(**prompts), grounded.predict_batch(**prompts)
    assert all(len(outputs) == 2 for outputs in (*theirs, *mine))
    for i in range(2):
        _same_prediction(tuple(out[i] for out in theirs), tuple(out[i] for out in mine))


def test_grounded_interface_predict_many_and_the_embedding_cache(predictors, image):
    official, grounded = predictors
    boxes = np.array([[50, 60, 300, 250], [10, 10, 100, 100]])
    masks, scores, low_res = grounded.predict_many(boxes=boxes, multimask_output=False)
    _same_prediction(official.predict(box=boxes, multimask_output=False), (masks[:, :], scores, low_res))
    embedding = grounded.get_image_embedding()
    grounded.set_image(image.copy())  # the same pixels: taken from the cache, not encoded again
    assert grounded.get_image_embedding() is embedding


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "grad"])
def test_predict_under_every_grad_mode(predictors, mode):
    _, grounded = predictors
    context = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
               "grad": torch.enable_grad}[mode]
    with context():
        masks, scores, _ = grounded.predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    assert masks.shape == (3, 300, 420) and np.isfinite(scores).all()


def test_mask_generator_equals_the_official(models, image):
    """Thresholds at 0 and no box NMS, so that every mask is compared; with use_m2m too."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    reference, ours, _ = models
    small = np.ascontiguousarray(image[:120, :160])
    for settings in (dict(points_per_side=3), dict(points_per_side=2, use_m2m=True)):
        settings.update(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
        _same_records(Official(reference, **settings).generate(small), SAM2AutomaticMaskGenerator(ours, **settings).generate(small))


def _same_records(theirs, mine, matched_at=0.99):
    assert len(theirs) > 0 and abs(len(mine) - len(theirs)) <= 0.01 * len(theirs)
    assert set(mine[0]) == set(theirs[0])
    a = np.stack([r["segmentation"] for r in theirs]).reshape(len(theirs), -1).astype(np.float32)
    b = np.stack([r["segmentation"] for r in mine]).reshape(len(mine), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    assert (iou.max(1) >= matched_at).mean() >= 0.99
    best = iou.argmax(1)
    scores_a = np.array([r["predicted_iou"] for r in theirs])
    scores_b = np.array([mine[j]["predicted_iou"] for j in best])
    np.testing.assert_allclose(scores_b, scores_a, atol=1e-4)


@pytest.mark.slow
def test_mask_generator_equals_the_official_on_at_least_500_masks(models, image):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    reference, ours, _ = models
    settings = dict(points_per_side=14, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    theirs = Official(reference, **settings).generate(image)
    assert len(theirs) >= 500
    _same_records(theirs, SAM2AutomaticMaskGenerator(ours, **settings).generate(image))


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("size", list(SIZE_CONFIGS))
def test_key_sets_and_shapes_equal_the_official_builders(size):
    official = {k: tuple(v.shape) for k, v in meta_model(SIZE_CONFIGS[size]).state_dict().items()}
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_sam2(size).state_dict().items()}
    image_part = {k: v for k, v in official.items() if k.startswith(IMAGE_PREFIXES)}
    assert ours == image_part
    assert set(official) - set(image_part) == {k for k in official if k.startswith(VIDEO_PREFIXES)}


def test_official_file_folder_and_safetensors_load_the_same_weights(models, tmp_path):
    from grounded.sam2 import save_pretrained

    _, ours, path = models
    again = from_pretrained(save_pretrained(ours, tmp_path / "saved"))
    for key, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    assert again.config == ours.config


def test_official_sizes_are_recognised_from_the_weights(tmp_path):
    from grounded.sam2.build import infer_config

    with torch.device("meta"):
        state = build_sam2("hiera_base_plus").state_dict()
    config = infer_config(state)
    assert config.embed_dim == 112 and config.num_heads == 2 and config.global_att_blocks == (12, 16, 20)


def test_sam1_checkpoint_given_to_sam2_is_refused_and_the_reverse(models, tmp_path):
    from grounded.sam import from_pretrained as sam_from_pretrained
    from grounded.sam import sam_model_registry
    from grounded.sam2 import Sam2
    from grounded.testing import tiny_sam

    sam1 = tmp_path / "sam1.pth"
    torch.save(tiny_sam("vit").state_dict(), sam1)
    with pytest.raises(CheckpointError, match="SAM 1 checkpoint"):
        from_pretrained(sam1)
    _, _, sam2_path = models
    with pytest.raises(CheckpointError, match="SAM 2 checkpoint"):
        sam_model_registry["vit_b"](checkpoint=sam2_path)
    with pytest.raises(CheckpointError, match="SAM 2 checkpoint: load it with grounded.sam2.from_pretrained"):
        sam_from_pretrained(sam2_path)
    with pytest.raises(CheckpointError, match="no official SAM 2 size"):  # a tiny Hiera needs its config
        from_pretrained(sam2_path)
    assert isinstance(from_pretrained(sam2_path, config=Sam2Config(**TINY_HIERA)), Sam2)


def test_size_mismatch_names_the_sizes(models):
    _, _, path = models
    with pytest.raises(CheckpointError, match=r"does not fit this SAM 2 model \(hiera_small\)"):
        build_sam2("hiera_small", checkpoint=path)
    with pytest.raises(CheckpointError, match="does not fit"):
        from_pretrained(path, model_size="hiera_tiny")


def test_unknown_name_lists_the_places_tried():
    with pytest.raises(FileNotFoundError, match="sam2.1_hiera_tiny"):
        from_pretrained("no_such_sam2")


# ---------------------------------------------------------------- bad input


def test_bad_prompts_are_named(predictors, models):
    _, grounded = predictors
    with pytest.raises(PromptError, match="outside"):
        grounded.predict(point_coords=np.array([[500, 10]]), point_labels=np.array([1]))
    with pytest.raises(PromptError, match="x1 < x0"):
        grounded.predict(box=np.array([300, 10, 100, 200]))
    with pytest.raises(PromptError, match="point_labels"):
        grounded.predict(point_coords=np.array([[10, 10], [20, 20]]), point_labels=np.array([1]))
    with pytest.raises(PromptError, match="point_labels"):
        grounded.predict(point_coords=np.array([[10, 10]]))
    with pytest.raises(RuntimeError, match="set_image"):
        SAM2ImagePredictor(models[1]).predict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    with pytest.raises(TypeError, match="SamPredictor for SAM 1"):
        from grounded.testing import tiny_sam

        SAM2ImagePredictor(tiny_sam("vit"))


# ---------------------------------------------------------------- hole and sprinkle filling


def test_connected_components_equal_scipy():
    from scipy import ndimage

    from grounded.sam2.fill import connected_components

    gen = torch.Generator().manual_seed(0)
    masks = torch.nn.functional.avg_pool2d(torch.rand(3, 1, 64, 80, generator=gen), 5, 1, 2) > 0.5
    masks[2, 0, 5:60, 7] = True  # a long thin component
    labels, areas = connected_components(masks)
    for i in range(3):
        ref, count = ndimage.label(masks[i, 0].numpy(), structure=np.ones((3, 3)))
        ours = labels[i, 0].numpy()
        assert count > 3
        assert len(set(zip(ref[ref > 0].tolist(), ours[ref > 0].tolist()))) == count == len(np.unique(ours[ours > 0]))
        sizes = np.bincount(ref.ravel())
        assert np.array_equal(np.where(ref > 0, sizes[ref], 0), areas[i, 0].numpy())


def test_hole_and_sprinkle_filling(predictors):
    from grounded.sam2.fill import fill_holes_and_sprinkles

    logits = torch.full((1, 1, 32, 32), -5.0)
    logits[..., 4:20, 4:20] = 5.0
    logits[..., 10:12, 10:12] = -5.0  # a hole of 4 pixels
    logits[..., 28, 28] = 5.0  # a sprinkle of 1 pixel
    filled = fill_holes_and_sprinkles(logits, 0.0, max_hole_area=4, max_sprinkle_area=1)
    assert (filled[..., 10:12, 10:12] > 0).all() and filled[..., 28, 28] < 0
    assert ((filled > 0) == (logits > 0)).sum() == 32 * 32 - 5
    _, grounded = predictors
    grounded.max_hole_area = grounded.max_sprinkle_area = 100
    try:
        masks, _, _ = grounded.predict(point_coords=np.array([[100, 120]]), point_labels=np.array([1]))
    finally:
        grounded.max_hole_area = grounded.max_sprinkle_area = 0.0
    assert masks.shape == (3, 300, 420)


# ---------------------------------------------------------------- Hugging Face Sam2Model


@pytest.fixture(scope="module")
def hf_model_and_folder(tmp_path_factory):
    """A tiny transformers Sam2Model (the tiny Hiera), random weights, saved with save_pretrained."""
    from transformers import Sam2Config as HFConfig
    from transformers import Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

    e = TINY_HIERA["embed_dim"]
    backbone = Sam2HieraDetConfig(
        hidden_size=e, num_attention_heads=1, blocks_per_stage=list(TINY_HIERA["stages"]),
        embed_dim_per_stage=[e, 2 * e, 4 * e, 8 * e], num_attention_heads_per_stage=[1, 2, 4, 8],
        window_size_per_stage=list(TINY_HIERA["window_spec"]), global_attention_blocks=list(TINY_HIERA["global_att_blocks"]),
        window_positional_embedding_background_size=[7, 7])
    model = Sam2Model(HFConfig(vision_config=Sam2VisionConfig(backbone_config=backbone,
                                                               backbone_channel_list=[8 * e, 4 * e, 2 * e, e]))).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        # the published conversions hold the official model's one positional matrix twice
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(model.shared_image_embedding.positional_embedding)
    folder = tmp_path_factory.mktemp("hf_sam2") / "sam2.1-hiera-tiny"
    model.save_pretrained(folder)
    yield model, folder
    import shutil

    shutil.rmtree(folder)


def _transformers_masks(model, pixels, image, points, labels):
    h, w = image.shape[:2]
    frame = torch.tensor(points, dtype=torch.float32) / torch.tensor([w, h]) * 1024
    with torch.no_grad():
        out = model(pixel_values=pixels, input_points=frame[None, None], input_labels=torch.tensor(labels)[None, None],
                    multimask_output=True)
    logits = torch.nn.functional.interpolate(out.pred_masks[0], (h, w), mode="bilinear", align_corners=False)
    return (logits[0] > 0).numpy(), out.iou_scores[0, 0].numpy()


def test_hf_folder_and_hub_id_give_transformers_masks(hf_model_and_folder, image, tmp_path, monkeypatch):
    from grounded.nodes.segment import sam_predictor
    from grounded.pipeline.models import ModelCache
    from grounded.testing.hf_cache import install_in_hf_cache, point_hf_cache_at

    model, folder = hf_model_and_folder
    points, labels = np.array([[100, 120], [300, 200]]), [1, 0]
    pixels = from_pretrained(folder).preprocess_image(image)[None]  # the same input for transformers
    expected_masks, expected_scores = _transformers_masks(model, pixels, image, points, labels)
    assert 0.01 < expected_masks.mean() < 0.99
    point_hf_cache_at(monkeypatch, install_in_hf_cache(folder, tmp_path / "hub", "facebook/sam2.1-hiera-tiny"))
    with ModelCache() as models:
        for source in (str(folder), "facebook/sam2.1-hiera-tiny"):
            predictor = sam_predictor(models, source, "cpu")  # the nodes' loader takes either family
            assert isinstance(predictor, SAM2ImagePredictor)
            predictor.set_image(image)
            masks, scores, _ = predictor.predict(point_coords=points, point_labels=np.array(labels))
            assert (masks != expected_masks).mean() < 1e-4
            np.testing.assert_allclose(scores, expected_scores, atol=1e-4)
    assert SAM2ImagePredictor.from_pretrained("facebook/sam2.1-hiera-tiny").model.config.embed_dim == TINY_HIERA["embed_dim"]


def test_the_cpu_wing_paths_are_taken_and_agree_with_the_core(models, predictors, image):
    """from_pretrained switches the wing on (grounded.sam.cpu.accelerate): prompts sharing the image
    take the low-rank path, mask prompts the regrouped one; both equal the core decoder's forward."""
    from grounded.sam.cpu import accelerate, paths_taken

    _, ours, path = models
    _, grounded = predictors
    core = SAM2ImagePredictor(from_pretrained(path, config=Sam2Config(**TINY_HIERA)))
    accelerate(core.model, "reference")
    core.set_image(image)
    boxes = np.array([[50, 60, 300, 250], [10, 10, 100, 100], [0, 0, 420, 300]] * 4)
    paths_taken(ours)
    fast = grounded.predict(box=boxes, multimask_output=False)
    assert "decoder/low_rank" in paths_taken(ours)
    _same_prediction(core.predict(box=boxes, multimask_output=False), fast)
    assert paths_taken(core.model) == ["decoder/reference"]
    mask = fast[2][:1]
    fast = grounded.predict(box=boxes[0], mask_input=mask)
    assert "decoder/regrouped" in paths_taken(ours)
    _same_prediction(core.predict(box=boxes[0], mask_input=mask), fast)

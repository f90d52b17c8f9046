"""SamPredictor beyond the reference: validation, content-keyed cache, batches, autocast."""

import numpy as np
import pytest
import torch

from grounded.sam import PromptError, SamPredictor
from grounded.testing import tiny_sam


@pytest.fixture(scope="module")
def model():
    return tiny_sam("vit", seed=11)


def _image(h=96, w=120, seed=0):
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))


def test_predict_before_set_image(model):
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(model).predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[130.0, 10.0]]), point_labels=np.array([1])), "outside the 120x96 image"),
        (dict(point_coords=np.array([[10.0, -1.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[10.0, 10.0], [20, 20]]), point_labels=np.array([1])), "one label per point"),
        (dict(point_coords=np.array([[10.0, 10.0]])), "point_labels"),
        (dict(box=np.array([50.0, 10.0, 20.0, 40.0])), "x1 < x0"),
        (dict(box=np.array([0.0, 0.0, 500.0, 40.0])), "outside"),
        (dict(box=np.array([0.0, 0.0, 50.0])), "4 numbers"),
        (dict(point_coords=np.array([[np.nan, 1.0]]), point_labels=np.array([1])), "finite"),
        (dict(box=np.array([0, 0, 9, 9.0]), mask_input=np.zeros((1, 64, 64))), "mask_input must be 1x32x32"),
    ],
)
def test_bad_prompts_get_clear_errors(model, kwargs, match):
    predictor = SamPredictor(model)
    predictor.set_image(_image())
    with pytest.raises(PromptError, match=match):
        predictor.predict(**kwargs)


def test_bad_images_get_clear_errors(model):
    from grounded.io.image import ImageError

    predictor = SamPredictor(model)
    with pytest.raises((ImageError, ValueError), match="shape|empty|channel"):
        predictor.set_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises((ImageError, ValueError), match="shape|channel"):
        predictor.set_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(_image(), image_format="HSV")
    with pytest.raises(ValueError, match="long side"):
        predictor.set_torch_image(torch.zeros(1, 3, 64, 64), (64, 64))


def test_grayscale_rgba_and_bgr_inputs(model):
    rgb = _image()
    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    reference = predictor.get_image_embedding().clone()
    predictor.set_image(np.ascontiguousarray(rgb[..., ::-1]), image_format="BGR")
    assert torch.equal(predictor.get_image_embedding(), reference)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    predictor.set_image(rgba)
    assert torch.allclose(predictor.get_image_embedding(), reference)
    predictor.set_image(rgb[..., 0])  # grayscale: replicated to three channels
    assert predictor.original_size == rgb.shape[:2]


def test_embedding_cache_never_reencodes_the_same_pixels(model, monkeypatch):
    predictor = SamPredictor(model, cache_size=2)
    calls = []
    encode = model.image_encoder.forward
    monkeypatch.setattr(model.image_encoder, "forward", lambda x: calls.append(x.shape[0]) or encode(x))
    a, b, c = _image(seed=1), _image(seed=2), _image(seed=3)
    predictor.set_image(a)
    predictor.set_image(a.copy())
    assert calls == [1]
    predictor.set_image(b)
    predictor.set_image(a)
    assert calls == [1, 1]
    predictor.set_image(c)  # evicts b (least recently used)
    predictor.set_image(b)
    assert calls == [1, 1, 1, 1]


def test_decode_is_predict_torch_without_the_upscaling(model):
    """The public decode: transformed prompts -> low-res logits and IoU predictions, which predict_torch
    then upscales; prompt errors are named."""
    predictor = SamPredictor(model)
    image = _image()
    predictor.set_image(image)
    coords, labels, boxes, _ = predictor.transform_prompts(np.array([[[30.0, 40.0]], [[60.0, 20.0]]]),
                                                           np.ones((2, 1)), np.array([[5.0, 5, 60, 50], [10, 20, 90, 80]]))
    low_res, iou = predictor.decode(coords, labels, boxes, multimask_output=False)
    masks, scores, low = predictor.predict_torch(coords, labels, boxes, multimask_output=False)
    assert low_res.shape == (2, 1, 32, 32) and iou.shape == (2, 1) and low_res.dtype == iou.dtype == torch.float32
    assert torch.equal(low_res, low) and torch.equal(iou, scores)
    assert masks.shape == (2, 1) + image.shape[:2]
    with pytest.raises(PromptError, match="together"):
        predictor.decode(coords, None)
    with pytest.raises(PromptError, match="does not match"):
        predictor.decode(coords, labels[:, :0])


def test_select_image_makes_a_batch_image_current_without_encoding(model, monkeypatch):
    images = [_image(seed=s) for s in range(3)]
    predictor = SamPredictor(model)
    predictor.set_images(images, batch_size=3)
    calls = []
    encode = model.image_encoder.forward
    monkeypatch.setattr(model.image_encoder, "forward", lambda x: calls.append(x.shape[0]) or encode(x))
    single = SamPredictor(model)
    for i, image in enumerate(images):
        predictor.select_image(i)
        single.set_image(image)
        # (a batch of 3 through the encoder may round differently from one image in the last bit)
        torch.testing.assert_close(predictor.get_image_embedding(), single.get_image_embedding(), rtol=1e-5, atol=1e-6)
    assert calls == [1, 1, 1]  # the single predictor's encodings only
    with pytest.raises(IndexError, match="image 3 of 3"):
        predictor.select_image(3)


def test_set_images_encodes_in_batches_and_predict_batch_matches_single(model, monkeypatch):
    images = [_image(seed=s, h=96 + 8 * s) for s in range(3)]
    batched = SamPredictor(model)
    calls = []
    encode = model.image_encoder.forward
    monkeypatch.setattr(model.image_encoder, "forward", lambda x: calls.append(x.shape[0]) or encode(x))
    batched.set_images(images, batch_size=2)
    assert calls == [2, 1]
    boxes = [np.array([[5, 5, 60, 60], [10, 20, 90, 80]], float) for _ in images]
    points = [np.array([[[30, 30]], [[50, 40]]], float) for _ in images]
    labels = [np.ones((2, 1)) for _ in images]
    results = batched.predict_batch(point_coords=points, point_labels=labels, boxes=boxes)
    single = SamPredictor(tiny_sam("vit", seed=11))
    for image, box, pt, lb, (masks, scores, low) in zip(images, boxes, points, labels, results):
        single.set_image(image)
        for i in range(2):
            m, s, l = single.predict(point_coords=pt[i], point_labels=lb[i], box=box[i])
            np.testing.assert_allclose(scores[i], s, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(low[i], l, rtol=1e-4, atol=1e-4)
            assert masks[i].shape == (3,) + image.shape[:2]


@pytest.mark.parametrize("end", ["set_image", "set_torch_image", "reset_image"])
def test_a_single_image_ends_the_set_images_batch(model, end):
    """Before, predict_batch after set_images then set_image prompted the old batch's images."""
    predictor = SamPredictor(model)
    predictor.set_images([_image(seed=1), _image(seed=2)], batch_size=2)
    other = _image(h=64, w=72, seed=3)
    if end == "set_image":
        predictor.set_image(other)
    elif end == "set_torch_image":
        pixels = torch.as_tensor(predictor.transform.apply_image(other)).permute(2, 0, 1)[None].float()
        predictor.set_torch_image(pixels, other.shape[:2])
    else:
        predictor.reset_image()
    with pytest.raises(RuntimeError, match="call set_images"):
        predictor.predict_batch(boxes=[np.array([[5.0, 5, 40, 40]])] * 2)
    with pytest.raises(IndexError, match="image 0 of 0"):
        predictor.select_image(0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
def test_low_precision_autocast_masks_agree_with_fp32(dtype, encoder):
    model = tiny_sam(encoder, seed=5)
    image = _image(h=160, w=200, seed=9)
    full, low = SamPredictor(model), SamPredictor(model, autocast_dtype=dtype)
    full.set_image(image)
    low.set_image(image)
    boxes = np.array([[10, 10, 120, 100], [60, 40, 190, 150], [0, 0, 199, 159]], float)
    m32, _, _ = full.predict_many(boxes=boxes)
    m16, _, _ = low.predict_many(boxes=boxes)
    inter = np.logical_and(m32, m16).sum(axis=(-1, -2))
    union = np.logical_or(m32, m16).sum(axis=(-1, -2))
    iou = inter[union > 0] / union[union > 0]
    assert iou.min() >= 0.98, iou


@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
def test_bf16_weights_masks_agree_with_fp32(encoder):
    """Weights cast to bf16 (no autocast) run end to end; everything, the mask logits included, is
    then bf16, so agreement is lower than under autocast (0.963 measured on tiny TinyViT)."""
    image = _image(h=160, w=200, seed=9)
    boxes = np.array([[10, 10, 120, 100], [60, 40, 190, 150], [0, 0, 199, 159]], float)
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        predictor = SamPredictor(tiny_sam(encoder, seed=5).to(dtype))
        predictor.set_image(image)
        results.append(predictor.predict_many(boxes=boxes)[0])
    inter = np.logical_and(*results).sum(axis=(-1, -2))
    union = np.logical_or(*results).sum(axis=(-1, -2))
    assert (inter[union > 0] / union[union > 0]).min() >= 0.95

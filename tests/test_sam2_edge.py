"""SAM 2.1 image path at its edges, on a tiny random model against the official `sam2` where it
defines the behaviour: PIL images of other modes than RGB, float images, batch mode and what ends it, mask_input
without its leading axis, the mask generator over crops in COCO RLE."""

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.sam.predictor import PromptError
from grounded.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, Sam2Config, from_pretrained
from sam2_reference import TINY_HIERA, official_model, save_official


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    reference = official_model(trunk=TINY_HIERA)
    path = save_official(reference, tmp_path_factory.mktemp("sam2_edge") / "tiny_sam2.1.pt")
    ours = from_pretrained(path, config=Sam2Config(**TINY_HIERA))
    path.unlink()
    return reference, ours


@pytest.fixture(scope="module")
def predictor(models):
    """One predictor for the module, whose cache keeps every image's embedding: each is encoded once."""
    return SAM2ImagePredictor(models[1], cache_size=16)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 60, 3), (20, 300, 3), (8, 10, 3))]


def test_pil_images_of_other_modes_give_the_same_pixels_as_their_arrays(predictor):
    """The official predictor reads only RGB PIL images; grounded reads the others as it reads arrays
    (alpha over black, 16-bit scaled by its range), not with PIL's convert("RGB") (alpha dropped,
    16-bit clipped to white)."""
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (24, 32, 4), dtype=np.uint8)
    deep = rng.integers(0, 4096, (24, 32), dtype=np.uint16)  # a 12-bit microscope image

    def embedding(image):
        predictor.set_image(image)
        return predictor.get_image_embedding()

    assert torch.equal(embedding(Image.fromarray(rgba)), embedding(rgba))
    assert torch.equal(embedding(Image.fromarray(deep)), embedding(deep))
    assert predictor.original_size == (24, 32)


def test_a_float_image_in_0_1_keeps_its_precision_as_in_the_official(models, predictor):
    """The official predictor takes a float32 image as fractions, unrounded; grounded rounded it to 8 bits."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    rng = np.random.default_rng(3)
    image = (0.4 + 0.02 * rng.random((24, 32, 3))).astype(np.float32)  # low contrast: 6 levels in 8 bits
    official = Official(models[0])
    official.set_image(image)
    predictor.set_image(image.astype(np.float64))  # which the official cannot take
    torch.testing.assert_close(predictor.get_image_embedding(), official.get_image_embedding(), rtol=1e-4, atol=1e-4)
    click = dict(point_coords=[[5, 6]], point_labels=[1], return_logits=True)
    for theirs, mine in zip(official.predict(**click), predictor.predict(**click)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4)


def test_the_mask_generator_takes_a_float_image_unrounded_as_the_official(models, predictor):
    """Before, the generator rounded a float image to 8 bits (its predictor did not)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    rng = np.random.default_rng(4)
    image = (0.4 + 0.02 * rng.random((24, 32, 3))).astype(np.float32)
    settings = dict(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
                    output_mode="uncompressed_rle")
    theirs = Official(models[0], **settings).generate(image)
    mine = SAM2AutomaticMaskGenerator(models[1], predictor=predictor, **settings).generate(image)
    assert len(mine) == len(theirs) >= 4
    for a, b in zip(sorted(theirs, key=lambda r: r["point_coords"]), sorted(mine, key=lambda r: r["point_coords"])):
        assert b["point_coords"] == a["point_coords"]
        # rounded to 8 bits, the scores differed by up to 6e-6 (this tiny random model barely reacts);
        # unrounded, by float32's last bit
        assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=5e-7)
        assert b["stability_score"] == a["stability_score"] and b["segmentation"] == a["segmentation"]


def test_predict_after_set_image_batch_prompts_the_last_image_as_the_official(models, predictor, images):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    batch = images[:2]  # different sizes
    official, grounded = Official(models[0]), predictor
    official.set_image_batch(batch)
    grounded.set_image_batch(batch)
    click = dict(point_coords=[[5, 6]], point_labels=[1], return_logits=True)
    theirs = official.predict(**click)
    assert theirs[0].shape == (3, 20, 300)
    # the whole batch's embeddings, as the official returns them (before: the current image's only)
    assert grounded.get_image_embedding().shape[0] == 2
    torch.testing.assert_close(grounded.get_image_embedding(), official.get_image_embedding(), rtol=1e-4, atol=1e-4)
    for _ in range(2):  # before and after a predict_batch, which visits every image
        mine = grounded.predict(**click)
        for a, b in zip(theirs, mine):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
        masks, _, _ = grounded.predict_batch(box_batch=[np.array([1, 1, 30, 30]), None])
        assert [m.shape for m in masks] == [(3, 40, 60), (3, 20, 300)]


def test_predict_batch_refuses_once_batch_mode_has_ended(models, predictor, images):
    """The official predictor asserts batch mode; grounded used to prompt the stale batch instead."""
    ours = models[1]
    boxes = dict(box_batch=[np.array([0, 0, 5, 5]), np.array([0, 0, 5, 5])])
    for end_batch in (lambda: predictor.set_image(images[2]), predictor.reset_predictor,
                      lambda: predictor.set_torch_image(ours.preprocess_image(images[2])[None], (8, 10))):
        predictor.set_image_batch(images[:2])
        assert len(predictor.predict_batch(**boxes)[0]) == 2
        end_batch()
        with pytest.raises(RuntimeError, match="set_image_batch"):
            predictor.predict_batch(**boxes)
    predictor.set_images(images[:2])  # grounded's interface starts batch mode too
    assert [m.shape for m in predictor.predict_batch(**boxes)[0]] == [(3, 40, 60), (3, 20, 300)]


def test_mask_input_without_its_leading_axis_names_its_shape(predictor, images):
    predictor.set_image(images[2])
    _, scores, low_res = predictor.predict(point_coords=[[3, 3]], point_labels=[1])
    with pytest.raises(PromptError, match=r"got shape \(256, 256\).*low_res\[i\]\[None\]"):
        predictor.predict(mask_input=low_res[np.argmax(scores)])
    assert predictor.predict(mask_input=low_res[np.argmax(scores)][None])[0].shape == (3, 8, 10)


def test_pixel_coordinates_with_normalize_coords_false_are_refused_naming_the_flag(predictor, images):
    """The official predictor takes them silently (masks for a point far outside the image); grounded
    refuses points outside the image, and here says which frame normalize_coords=False means."""
    predictor.set_image(images[2])
    for prompt in (dict(point_coords=[[6, 4]], point_labels=[1]), dict(box=[1, 1, 6, 4])):
        with pytest.raises(PromptError, match=r"outside the 1x1 image.*normalize_coords=False.*in \[0, 1\]"):
            predictor.predict(**prompt, normalize_coords=False)
    assert predictor.predict(point_coords=[[0.6, 0.5]], point_labels=[1], normalize_coords=False)[0].shape == (3, 8, 10)


def test_mask_generator_over_crops_in_coco_rle_equals_the_official(models, predictor, images):
    """crop_n_layers=1 (crops encoded in a batch), points_per_batch not dividing the grid, thresholds
    at 0 and no NMS so that every record is compared; the COCO RLE decodes to the official's masks
    (but for a pixel whose logit sits on the threshold)."""
    from pycocotools import mask as mask_utils
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Official

    reference, ours = models
    settings = dict(points_per_side=2, points_per_batch=3, crop_n_layers=1, pred_iou_thresh=0.0,
                    stability_score_thresh=0.0, box_nms_thresh=1.0, crop_nms_thresh=1.0, output_mode="coco_rle")

    def order(records):
        return sorted(records, key=lambda r: (r["crop_box"], r["point_coords"], -r["predicted_iou"]))

    theirs = order(Official(reference, **settings).generate(images[0]))
    with torch.inference_mode():
        mine = order(SAM2AutomaticMaskGenerator(ours, predictor=predictor, **settings).generate(images[0]))
    assert len(theirs) >= 10 and len(mine) == len(theirs)
    flipped = 0
    for a, b in zip(theirs, mine):
        assert b["segmentation"]["size"] == a["segmentation"]["size"] == [40, 60]
        mask = mask_utils.decode(b["segmentation"]) > 0
        differ = int((mask != (mask_utils.decode(a["segmentation"]) > 0)).sum())
        flipped += differ
        assert b["area"] == mask.sum() and abs(b["area"] - a["area"]) <= differ
        np.testing.assert_allclose(b["bbox"], a["bbox"], atol=1 if differ else 0)
        assert b["point_coords"] == a["point_coords"] and b["crop_box"] == a["crop_box"]
        assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=1e-4)
        assert b["stability_score"] == pytest.approx(a["stability_score"], abs=1e-4)
    assert flipped <= 1e-4 * len(theirs) * 40 * 60

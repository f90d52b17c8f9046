"""Numerical parity with segment_anything 1.0 (ViT) and MobileSAM (TinyViT) on the same random weights."""

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor
from grounded.testing import tiny_sam
from reference import reference_sam


def _pair(encoder, seed=0, image_size=128):
    ours = tiny_sam(encoder, image_size=image_size, seed=seed)
    ref = reference_sam(ours.config, ours.state_dict())
    return ours, ref


@pytest.fixture(scope="module")
def vit_pair():
    return _pair("vit")


@pytest.fixture(scope="module")
def tinyvit_pair():
    return _pair("tiny_vit")


def _rel_err(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() / b.norm()).item()


def test_rel_pos_tables_are_nonzero(vit_pair):
    ours, _ = vit_pair
    for blk in ours.image_encoder.blocks:
        assert blk.attn.rel_pos_h.abs().sum() > 0 and blk.attn.rel_pos_w.abs().sum() > 0


@pytest.mark.parametrize("size", [(128, 128), (96, 128), (128, 80)])
def test_vit_image_embedding(vit_pair, size):
    ours, ref = vit_pair
    torch.manual_seed(1)
    x = torch.randn(1, 3, *size) * 50 + 120
    with torch.no_grad():
        a = ours.image_encoder(ours.preprocess(x))
        b = ref.image_encoder(ref.preprocess(x))
    assert a.shape == b.shape
    assert _rel_err(a, b) < 1e-5


def test_tinyvit_image_embedding(tinyvit_pair):
    ours, ref = tinyvit_pair
    torch.manual_seed(2)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        a, b = ours.image_encoder(x), ref.image_encoder(x)
    assert _rel_err(a, b) < 1e-5


def _random_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w].copy()


PROMPTS = {
    "point": dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1])),
    "points_fg_bg": dict(point_coords=np.array([[30.0, 40.0], [70.0, 20.0], [5.0, 90.0]]), point_labels=np.array([1, 0, 1])),
    "box": dict(box=np.array([10.0, 12.0, 80.0, 70.0])),
    "point_box": dict(point_coords=np.array([[40.0, 40.0]]), point_labels=np.array([1]), box=np.array([10.0, 12.0, 80.0, 70.0])),
}


@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
@pytest.mark.parametrize("image_hw", [(100, 120), (150, 90)])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("multimask", [True, False])
def test_predictor_matches_reference(encoder, image_hw, prompt, multimask, vit_pair, tinyvit_pair):
    from segment_anything import SamPredictor as RefPredictor

    ours, ref = vit_pair if encoder == "vit" else tinyvit_pair
    image = _random_image(*image_hw, seed=3)
    p_ours, p_ref = SamPredictor(ours), RefPredictor(ref)
    p_ours.set_image(image)
    p_ref.set_image(image)
    assert _rel_err(p_ours.get_image_embedding(), p_ref.get_image_embedding()) < 1e-5

    kwargs = dict(PROMPTS[prompt], multimask_output=multimask)
    m1, s1, l1 = p_ours.predict(**kwargs)
    m2, s2, l2 = p_ref.predict(**kwargs)
    assert m1.shape == m2.shape == ((3 if multimask else 1),) + image_hw
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-4, atol=1e-4 * np.abs(l2).max())
    # Thresholded masks may differ only where the reference's logit sits on the threshold.
    lg, _, _ = p_ref.predict(**kwargs, return_logits=True)
    differ = m1 != m2
    assert np.all(np.abs(lg[differ]) < 1e-3)

    # Feeding the low-res logits back as a mask prompt (the interactive loop).
    kwargs_mask = dict(kwargs, mask_input=l2[np.argmax(s2)][None])
    _, s3, l3 = p_ours.predict(**kwargs_mask)
    _, s4, l4 = p_ref.predict(**kwargs_mask)
    np.testing.assert_allclose(s3, s4, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l3, l4, rtol=1e-4, atol=1e-4 * np.abs(l4).max())


def test_predict_torch_batched_boxes_match_reference(vit_pair):
    from segment_anything import SamPredictor as RefPredictor

    ours, ref = vit_pair
    image = _random_image(110, 128, seed=4)
    p_ours, p_ref = SamPredictor(ours), RefPredictor(ref)
    p_ours.set_image(image)
    p_ref.set_image(image)
    boxes = torch.tensor([[5, 5, 60, 60], [20, 30, 100, 90], [0, 0, 127, 109]], dtype=torch.float)
    tb = p_ref.transform.apply_boxes_torch(boxes, image.shape[:2])
    a = p_ours.predict_torch(None, None, boxes=tb, multimask_output=True, return_logits=True)
    b = p_ref.predict_torch(None, None, boxes=tb, multimask_output=True, return_logits=True)
    for x, y in zip(a, b):
        assert _rel_err(x, y) < 1e-5
    # The numpy many-prompt API gives the same as one predict per box.
    masks, scores, low = p_ours.predict_many(boxes=boxes.numpy(), return_logits=True)
    for i, box in enumerate(boxes.numpy()):
        _, s, l = p_ref.predict(box=box, return_logits=True)
        np.testing.assert_allclose(scores[i], s, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(low[i], l, rtol=1e-4, atol=1e-4 * np.abs(l).max())


def test_sam_forward_matches_reference(vit_pair):
    ours, ref = vit_pair
    torch.manual_seed(5)
    batched = [
        {
            "image": torch.rand(3, 128, 96) * 255,
            "original_size": (200, 150),
            "point_coords": torch.tensor([[[20.0, 30.0], [60.0, 90.0]]]),
            "point_labels": torch.tensor([[1, 0]]),
        },
        {
            "image": torch.rand(3, 80, 128) * 255,
            "original_size": (80, 128),
            "boxes": torch.tensor([[10.0, 10.0, 70.0, 60.0], [0.0, 0.0, 40.0, 40.0]]),
            "mask_inputs": torch.randn(2, 1, 32, 32),
        },
    ]
    a, b = ours(batched, multimask_output=True), ref(batched, multimask_output=True)
    for ra, rb in zip(a, b):
        assert _rel_err(ra["low_res_logits"], rb["low_res_logits"]) < 1e-5
        assert _rel_err(ra["iou_predictions"], rb["iou_predictions"]) < 1e-5
        assert (ra["masks"] != rb["masks"]).float().mean() < 1e-3


def test_state_dict_names_equal_reference_for_every_variant():
    """Official checkpoints load with strict=True: the key sets and shapes of every variant match
    segment_anything's and MobileSAM's builders (on the meta device, nothing is allocated)."""
    import segment_anything
    import mobile_sam

    from grounded.sam import sam_model_registry

    for name, ref_builder in [("vit_b", segment_anything.build_sam_vit_b), ("vit_l", segment_anything.build_sam_vit_l),
                              ("vit_h", segment_anything.build_sam_vit_h), ("vit_t", mobile_sam.build_sam_vit_t)]:
        # MobileSAM's TinyViT cannot be built on meta (it calls .item()); it is small enough for the CPU.
        with torch.device("cpu" if name == "vit_t" else "meta"):
            ours = sam_model_registry[name]()
            ref = ref_builder()
        a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        b = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert a == b, name

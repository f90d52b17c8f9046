"""SamAutomaticMaskGenerator and its helpers against segment_anything / MobileSAM's.

Three levels:
- helpers (RLE, boxes, grids, crops, stability) equal the reference's on random inputs;
- the generator, run by the reference and by us on the *same* tiny random model, gives identical
  records (every field), with crops, small-region removal and each output mode, for images smaller
  and larger than the model's input; its Detections, progress and shared predictor;
- on the real MobileSAM weights and real images, against the reference generator with the
  reference's own model: mask count within 1% and >= 99% of masks matched one to one at IoU >= 0.99.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounded.sam.utils import amg
from grounded.testing import tiny_sam

ref_amg = pytest.importorskip("segment_anything.utils.amg")


def random_masks(n, h, w, seed=0, density=0.5):
    gen = torch.Generator().manual_seed(seed)
    smooth = F.avg_pool2d(torch.rand(n, 1, h, w, generator=gen), 5, 1, 2)[:, 0]
    return smooth > density


# ---- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 7, 5), (3, 32, 48), (2, 1, 9)])
def test_mask_to_rle_and_back_equal_reference(shape):
    masks = random_masks(*shape, seed=sum(shape))
    masks[0] = True  # a full mask: starts with a zero-length run of zeros, ends at the last pixel
    if shape[0] > 2:
        masks[2] = False
    ours, ref = amg.mask_to_rle_pytorch(masks), ref_amg.mask_to_rle_pytorch(masks)
    assert ours == ref
    for rle, mask in zip(ours, masks):
        assert np.array_equal(amg.rle_to_mask(rle), ref_amg.rle_to_mask(rle))
        assert np.array_equal(amg.rle_to_mask(rle), mask.numpy())
        assert amg.area_from_rle(rle) == ref_amg.area_from_rle(rle) == int(mask.sum())
        assert amg.coco_encode_rle(rle) == ref_amg.coco_encode_rle(rle)


@pytest.mark.parametrize("crop_box", [[0, 0, 30, 20], [5, 0, 30, 20], [0, 4, 17, 20], [3, 2, 21, 13], [9, 6, 30, 20]])
def test_crop_masks_encode_straight_into_the_image_frame(crop_box):
    orig_h, orig_w = 20, 30
    x0, y0, x1, y1 = crop_box
    masks = random_masks(5, y1 - y0, x1 - x0, seed=x0 + 7 * y0, density=0.45)
    masks[0] = True
    masks[1, -1, -1] = True  # reaches the crop's last pixel
    padded = ref_amg.uncrop_masks(masks, crop_box, orig_h, orig_w)
    expected = [r["counts"] for r in ref_amg.mask_to_rle_pytorch(padded)]
    ours = amg.masks_to_rle_counts(masks, crop_box, orig_h, orig_w)
    assert [c.tolist() for c in ours] == expected
    assert amg.masks_to_rle_counts(masks[:0], crop_box, orig_h, orig_w) == []
    assert amg.mask_to_rle_pytorch(masks[:0]) == ref_amg.mask_to_rle_pytorch(masks[:0]) == []


def test_boxes_stability_and_small_regions_equal_reference():
    masks = random_masks(6, 40, 50, seed=3)
    masks[1] = False
    for shape in [(6, 40, 50), (2, 3, 40, 50), (40, 50)]:
        m = masks.reshape(shape) if len(shape) > 2 else masks[0]
        assert torch.equal(amg.batched_mask_to_box(m), ref_amg.batched_mask_to_box(m))
    logits = torch.randn(6, 40, 50) * 3
    assert torch.equal(amg.calculate_stability_score(logits, 0.0, 1.0), ref_amg.calculate_stability_score(logits, 0.0, 1.0))
    for mask in masks.numpy():
        for mode in ("holes", "islands"):
            ours, ref = amg.remove_small_regions(mask, 30, mode), ref_amg.remove_small_regions(mask, 30, mode)
            assert np.array_equal(ours[0], ref[0]) and ours[1] == ref[1]


def test_grids_crop_boxes_and_mask_data_equal_reference():
    for n, layers, scale in [(32, 0, 1), (16, 2, 2), (5, 1, 1)]:
        for a, b in zip(amg.build_all_layer_point_grids(n, layers, scale), ref_amg.build_all_layer_point_grids(n, layers, scale)):
            assert np.array_equal(a, b)
    for size, layers in [((3000, 4000), 1), ((300, 451), 2), ((512, 512), 0)]:
        assert amg.generate_crop_boxes(size, layers, 512 / 1500) == ref_amg.generate_crop_boxes(size, layers, 512 / 1500)
    ours, ref = amg.MaskData(a=torch.arange(5), b=np.arange(5), c=list("abcde")), ref_amg.MaskData(a=torch.arange(5), b=np.arange(5), c=list("abcde"))
    for data in (ours, ref):
        data.cat(type(data)(a=torch.arange(2), b=np.arange(2), c=list("xy")))
        data.filter(torch.tensor([True, False, True, True, False, True, False]))
        data.filter(torch.tensor([3, 0, 1]))
    for key in "abc":
        assert np.array_equal(np.asarray(ours[key]), np.asarray(ref[key]))


# ---- same model: identical records -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_sam("vit", image_size=128, seed=0)


def scene(h, w, seed=0):
    """A small image with a few flat shapes on noise (the tiny model needs something to segment)."""
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    image[h // 5 : h // 2, w // 4 : w // 2] = (200, 40, 40)
    yy, xx = np.mgrid[:h, :w]
    image[(yy - 2 * h // 3) ** 2 + (xx - 2 * w // 3) ** 2 < (min(h, w) // 5) ** 2] = (30, 200, 90)
    return image


LOOSE = dict(points_per_side=6, pred_iou_thresh=-1.0, stability_score_thresh=0.0, stability_score_offset=0.2)


def assert_same_records(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], np.ndarray):
                assert np.array_equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


@pytest.mark.parametrize("settings", [
    dict(),
    dict(crop_n_layers=1),
    dict(min_mask_region_area=25, output_mode="coco_rle"),
    dict(crop_n_layers=1, crop_n_points_downscale_factor=2, min_mask_region_area=25, output_mode="uncompressed_rle"),
], ids=["plain", "crops", "small-regions-coco", "crops-regions-rle"])
def test_same_model_gives_identical_records(tiny_model, settings):
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    from grounded.sam import SamAutomaticMaskGenerator

    image = scene(90, 120)
    kwargs = dict(LOOSE, **settings)
    ours = SamAutomaticMaskGenerator(tiny_model, encoder_batch_size=1, **kwargs).generate(image)
    ref = Reference(tiny_model, **kwargs).generate(image)
    assert len(ref) > 5
    assert_same_records(ours, ref)


@pytest.mark.parametrize("size", [(90, 120), (300, 400)], ids=["small", "large"])
def test_results_do_not_depend_on_chunking(tiny_model, size):
    """One mask per chunk, most chunks left empty by the stability filter: the same records."""
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    from grounded.sam import SamAutomaticMaskGenerator

    image = np.repeat(np.repeat(scene(size[0] // 3, size[1] // 3, seed=1), 3, axis=0), 3, axis=1)
    kwargs = dict(LOOSE, points_per_side=4, stability_score_thresh=0.5, stability_score_offset=0.005, box_nms_thresh=1.0)
    one_at_a_time = SamAutomaticMaskGenerator(tiny_model, **kwargs, postprocess_memory_mb=0.001).generate(image)
    assert_same_records(one_at_a_time, SamAutomaticMaskGenerator(tiny_model, **kwargs).generate(image))
    ref = Reference(tiny_model, **kwargs).generate(image)
    assert 3 <= len(ref) < 3 * 16  # some masks kept, some dropped
    assert_same_records(one_at_a_time, ref)


def test_batched_crop_encoding_matches_one_at_a_time(tiny_model):
    from grounded.sam import SamAutomaticMaskGenerator

    image = scene(90, 120, seed=2)
    kwargs = dict(LOOSE, crop_n_layers=1, output_mode="uncompressed_rle")
    one = SamAutomaticMaskGenerator(tiny_model, encoder_batch_size=1, **kwargs).generate(image)
    batched = SamAutomaticMaskGenerator(tiny_model, encoder_batch_size=4, **kwargs).generate(image)
    # Batched encoder calls may round differently in the last bit: the same masks up to a pixel or two
    # on a contour (IoU says nothing for the one-pixel masks of this random model), near-equal scores.
    assert len(one) == len(batched)
    for a, b in zip(one, batched):
        x, y = amg.rle_to_mask(a["segmentation"]), amg.rle_to_mask(b["segmentation"])
        assert (x != y).sum() <= max(2, 0.01 * (x | y).sum())
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)


def test_large_image_gives_the_reference_masks(tiny_model):
    """A 400x300 image for a 128-pixel model, with crops: upsampled masks larger than the input."""
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    from grounded.sam import SamAutomaticMaskGenerator

    image = np.repeat(np.repeat(scene(75, 100, seed=3), 4, axis=0), 4, axis=1)
    kwargs = dict(LOOSE, crop_n_layers=1, output_mode="uncompressed_rle")
    gen = SamAutomaticMaskGenerator(tiny_model, encoder_batch_size=1, **kwargs)
    ours, ref = gen.generate(image), Reference(tiny_model, **kwargs).generate(image)
    assert len(ours) == len(ref) > 5
    identical = sum(a == b for a, b in zip(ours, ref))
    # Float rounding may move a pixel sitting on a threshold; nothing else may differ.
    assert identical >= len(ref) - 2
    for a, b in zip(ours, ref):
        assert mask_iou(a["segmentation"], b["segmentation"]) > 0.999


def test_detections_progress_and_a_shared_predictor(tiny_model):
    """generate_detections gives generate's masks as Detections (boxes as COCO counts them), progress
    reports every point batch of every crop, and predictor= prompts through the given predictor."""
    from grounded.io.masks import record_rle
    from grounded.rle import rle_boxes_xyxy
    from grounded.sam import SamAutomaticMaskGenerator, SamPredictor

    image = scene(90, 120)
    predictor = SamPredictor(tiny_model)
    kwargs = dict(LOOSE, crop_n_layers=1, points_per_batch=10, output_mode="coco_rle")
    gen = SamAutomaticMaskGenerator(tiny_model, predictor=predictor, **kwargs)
    assert gen.predictor is predictor
    calls = []
    records = gen.generate(image, progress=lambda done, total: calls.append((done, total)))
    # 36 points in batches of 10 on the whole image, 36 on each of 4 crops: 4 batches each, 20 in all
    assert calls == [(i, 20) for i in range(21)]
    detections = gen.generate_detections(image)
    assert len(detections) == len(records) > 5 and detections.image_size == image.shape[:2]
    assert [d["counts"] for d in detections.rles] == [record_rle(r)["counts"] for r in records]
    np.testing.assert_array_equal(detections.xyxy, rle_boxes_xyxy(detections.rles))
    np.testing.assert_allclose(detections.scores, [r["predicted_iou"] for r in records], rtol=1e-6)
    assert detections.data["stability_score"].tolist() == pytest.approx([r["stability_score"] for r in records])
    assert detections.data["crop_box"] == [r["crop_box"] for r in records]
    assert detections.data["point_coords"] == [r["point_coords"] for r in records]
    with pytest.raises(ValueError, match="same model"):
        SamAutomaticMaskGenerator(tiny_sam("vit", image_size=128, seed=1), predictor=predictor)


def test_generator_validates_arguments(tiny_model):
    from grounded.sam import SamAutomaticMaskGenerator

    with pytest.raises(ValueError, match="Exactly one"):
        SamAutomaticMaskGenerator(tiny_model, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(tiny_model, output_mode="png")
    grids = amg.build_all_layer_point_grids(4, 1, 1)
    gen = SamAutomaticMaskGenerator(tiny_model, points_per_side=None, point_grids=grids, crop_n_layers=1, **{
        k: v for k, v in LOOSE.items() if k != "points_per_side"})
    records = gen.generate(scene(60, 80)[..., 0])  # greyscale: read as RGB
    assert set(gen.timings) == {"encoder", "decoder", "postprocess"}
    for r in records:
        assert set(r) == {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
        assert r["segmentation"].shape == (60, 80) and r["area"] == int(r["segmentation"].sum())


# ---- real weights, real images: against the reference generator ------------------------------


def mask_iou(a, b):
    from grounded.io.masks import record_mask

    a, b = record_mask(a), record_mask(b)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def match_masks(ours, ref, threshold=0.99):
    """How many reference masks have their own partner in ours (one to one) at IoU >= threshold."""
    from scipy.optimize import linear_sum_assignment

    from grounded.io.masks import record_mask

    if not ours or not ref:
        return 0
    a = np.stack([record_mask(r["segmentation"]).ravel() for r in ours]).astype(np.float32)
    b = np.stack([record_mask(r["segmentation"]).ravel() for r in ref]).astype(np.float32)
    inter = a @ b.T
    iou = inter / np.maximum(a.sum(1)[:, None] + b.sum(1)[None] - inter, 1)
    rows, cols = linear_sum_assignment(-iou)
    return int((iou[rows, cols] >= threshold).sum())


@pytest.fixture(scope="module")
def mobile_sam_pair(mobile_sam_checkpoint):
    import mobile_sam

    from grounded.sam import from_pretrained

    return from_pretrained(mobile_sam_checkpoint), mobile_sam.sam_model_registry["vit_t"](checkpoint=str(mobile_sam_checkpoint)).eval()


def sample(name):
    from pathlib import Path

    from grounded.io.image import load_image

    path = Path(__file__).parent.parent / "samples" / f"{name}.jpg"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    return load_image(path)


def compare_with_reference(pair, image, **settings):
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    from grounded.sam import SamAutomaticMaskGenerator

    ours_model, ref_model = pair
    ours = SamAutomaticMaskGenerator(ours_model, **settings).generate(image)
    ref = Reference(ref_model, **settings).generate(image)
    matched = match_masks(ours, ref)
    print(f"{image.shape} {settings}: ours {len(ours)} reference {len(ref)} matched@0.99 {matched}")
    assert len(ref) > 3
    # 1% of the reference's masks, and never less than one: a mask whose score sits exactly on a
    # threshold may fall either way when the floats round differently.
    allowed = max(1, int(0.01 * len(ref)))
    assert abs(len(ours) - len(ref)) <= allowed
    assert len(ref) - matched <= allowed
    return ours, ref


@pytest.mark.parametrize("size", [None, (1200, 1800)], ids=["small", "large"])
def test_real_weights_same_model_gives_identical_records(mobile_sam_pair, size):
    """Our MobileSAM inside both generators: whatever differs is the generators'. At 1800x1200 the
    masks are upsampled beyond the model's input."""
    from mobile_sam import SamAutomaticMaskGenerator as Reference
    from PIL import Image

    from grounded.sam import SamAutomaticMaskGenerator

    image = sample("chelsea")
    if size is not None:
        image = np.array(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    settings = dict(points_per_side=6 if size is None else 8, min_mask_region_area=100, output_mode="coco_rle",
                    stability_score_thresh=0.9)
    if size is None:  # (the crops of the large image are small enough for full-size logits: leave them out)
        settings.update(crop_n_layers=1, crop_n_points_downscale_factor=2)
    gen = SamAutomaticMaskGenerator(mobile_sam_pair[0], encoder_batch_size=1, **settings)
    ours, ref = gen.generate(image), Reference(mobile_sam_pair[0], **settings).generate(image)
    assert len(ref) > 5
    if size is None:
        assert_same_records(ours, ref)
    else:  # a pixel on a threshold may round the other way, nothing more
        assert len(ours) == len(ref)
        assert all(mask_iou(a["segmentation"], b["segmentation"]) > 0.9999 for a, b in zip(ours, ref))
        assert [a["stability_score"] for a in ours] == pytest.approx([b["stability_score"] for b in ref], abs=1e-4)


def test_real_weights_one_mask_per_chunk_gives_identical_records(mobile_sam_pair, stardist_nuclei):
    """Chunks of one mask, many emptied by the filters: the records stay aligned and identical."""
    from mobile_sam import SamAutomaticMaskGenerator as Reference

    from grounded.sam import SamAutomaticMaskGenerator

    image = np.ascontiguousarray(stardist_nuclei[0][:256, 128:448])
    settings = dict(points_per_side=6, output_mode="uncompressed_rle")
    ours = SamAutomaticMaskGenerator(mobile_sam_pair[0], postprocess_memory_mb=0.001, **settings).generate(image)
    ref = Reference(mobile_sam_pair[0], **settings).generate(image)
    assert len(ref) > 5
    assert_same_records(ours, ref)


def test_real_weights_stardist_matches_reference(mobile_sam_pair, stardist_nuclei):
    compare_with_reference(mobile_sam_pair, stardist_nuclei[0], points_per_side=10)


def test_real_weights_photo_with_crops_and_small_regions_matches_reference(mobile_sam_pair):
    compare_with_reference(mobile_sam_pair, sample("chelsea"), points_per_side=8, crop_n_layers=1,
                           crop_n_points_downscale_factor=2, min_mask_region_area=100)


@pytest.mark.slow
@pytest.mark.timeout(7200)  # the reference runs 1024 prompts per crop at ~0.15 s each on a CPU
@pytest.mark.parametrize("name", ["stardist", "astronaut", "coffee", "chelsea"])
@pytest.mark.parametrize("settings", [dict(), dict(crop_n_layers=1), dict(min_mask_region_area=100)], ids=["plain", "crops", "regions"])
def test_real_weights_default_grid_matches_reference(mobile_sam_pair, stardist_nuclei, name, settings):
    image = stardist_nuclei[0] if name == "stardist" else sample(name)
    compare_with_reference(mobile_sam_pair, image, points_per_side=32, **settings)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_4000x3000_with_crops_stays_under_4_gb(mobile_sam_checkpoint, tmp_path):
    """Peak RSS of a fresh process running the default grid with one crop layer on 4000x3000."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "bench" / "bench_amg.py"
    done = subprocess.run([sys.executable, str(script), "--preset", "large", "--side", "ours", "--json", str(tmp_path / "peak.json")],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "peak.json").read_text())["ours"]
    print(result)
    assert "error" not in result and result["peak_rss_mb"] < 4096


def test_no_masks_at_all(tiny_model):
    from grounded.sam import SamAutomaticMaskGenerator

    for settings in (dict(pred_iou_thresh=1.0), dict(crop_n_layers=1, pred_iou_thresh=1.0, min_mask_region_area=10),
                     dict(pred_iou_thresh=-1.0, stability_score_thresh=1.01)):
        for size in ((40, 50), (300, 400)):  # smaller and larger than the model's input
            assert SamAutomaticMaskGenerator(tiny_model, points_per_side=3, **settings).generate(scene(*size)) == []

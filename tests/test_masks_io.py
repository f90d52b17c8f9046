"""grounded.rle, grounded.io.masks and grounded.io.overlay: RLE against pycocotools, every mask
form, polygons, label maps, overlays; and generator records into a COCO document."""

import json

import numpy as np
import pytest

from grounded import rle
from grounded.detections import Detections
from grounded.io import masks as mio
from grounded.io.formats import image_document
from grounded.io.overlay import instance_colors, mask_outline, overlay

mask_utils = pytest.importorskip("pycocotools.mask")


def random_masks(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            m[y0 : y0 + rng.integers(1, h), x0 : x0 + rng.integers(1, w)] = True
        m ^= rng.random((h, w)) < 0.02  # speckle: many short runs
        out.append(m)
    return out


EDGE_CASES = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.eye(6, 9, dtype=bool), np.ones((1, 1), bool),
              np.zeros((1, 1), bool), np.pad(np.ones((3, 3), bool), 2)]


@pytest.mark.parametrize("mask", EDGE_CASES + random_masks(6, 37, 53) + random_masks(2, 300, 200, seed=1))
def test_rle_round_trips_and_matches_pycocotools(mask):
    ours = rle.encode_rle(mask)
    coco = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle.compress_rle(ours)["counts"] == coco["counts"].decode()  # byte for byte
    assert rle.compress_rle(ours)["size"] == list(coco["size"])
    assert np.array_equal(rle.decode_rle(ours), mask)
    assert np.array_equal(rle.decode_rle(coco), mask)  # bytes counts from pycocotools
    assert np.array_equal(rle.decode_rle(rle.compress_rle(ours)), mask)
    assert rle.decompress_rle(rle.compress_rle(ours)) == ours
    assert rle.rle_area(ours) == int(mask_utils.area(coco)) == int(mask.sum())
    assert rle.rle_to_bbox(ours) == mask_utils.toBbox(coco).tolist()
    assert rle.rle_to_bbox(rle.compress_rle(ours)) == mask_utils.toBbox(coco).tolist()


def test_counts_string_codec_matches_pycocotools_on_large_and_negative_deltas():
    rng = np.random.default_rng(3)
    h, w = 3000, 4000
    runs = rng.integers(1, 200_000, size=41)  # large counts and, from the fourth on, big +- deltas
    runs = np.concatenate([[0], runs, [h * w - runs.sum()]])
    assert runs[-1] > 0
    uncompressed = {"size": [h, w], "counts": runs.tolist()}
    coco = mask_utils.frPyObjects(uncompressed, h, w)
    assert rle.counts_to_string(runs) == coco["counts"].decode()
    assert rle.counts_from_string(coco["counts"]).tolist() == runs.tolist()


def records_for(masks):
    return [{"segmentation": rle.encode_rle(m), "area": int(m.sum()), "bbox": [0, 0, 1, 1], "predicted_iou": 0.9 - i / 100,
             "point_coords": [[1.0, 2.0]], "stability_score": np.float32(0.97), "crop_box": [0, 0, m.shape[1], m.shape[0]]}
            for i, m in enumerate(masks)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own numpy 2 notice
def test_an_image_document_loads_in_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    masks = random_masks(4, 40, 60, seed=5)
    dets = Detections.from_sam_records(records_for(masks), image_size=(40, 60))
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(image_document(dets, "x.png", 40, 60)))
    coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == 4 and coco.loadCats(coco.getCatIds()) == [{"id": 1, "name": "object"}]
    for ann, mask in zip(anns, masks):
        assert np.array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["area"] == int(mask.sum()) and ann["score"] == pytest.approx(0.9, abs=0.05)
        assert ann["bbox"] == mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))).tolist()


def test_every_segmentation_form_gives_the_same_mask():
    mask = random_masks(1, 30, 20, seed=7)[0]
    forms = [mask, mask.astype(np.uint8), rle.encode_rle(mask), rle.compress_rle(rle.encode_rle(mask)),
             {"segmentation": mask}, {"segmentation": rle.compress_rle(rle.encode_rle(mask))}]
    for form in forms:
        assert np.array_equal(mio.record_mask(form), mask)
        assert mio.record_rle(form) == rle.compress_rle(rle.encode_rle(mask))


def test_polygons_trace_outer_contours_and_report_holes():
    cv2 = pytest.importorskip("cv2")
    square = np.zeros((40, 50), bool)
    square[5:25, 10:40] = True
    polygons, holes = mio.mask_to_polygons(square)
    assert len(polygons) == 1 and not holes
    assert polygons[0] == [10.0, 5.0, 10.0, 24.0, 39.0, 24.0, 39.0, 5.0]  # pixel centres of the corners
    ring = square.copy()
    ring[10:20, 20:30] = False
    island = np.zeros_like(square)
    island[30:36, 2:8] = True
    polygons, holes = mio.mask_to_polygons(ring | island)
    assert len(polygons) == 2 and holes
    drawn = np.zeros(square.shape, np.uint8)
    cv2.fillPoly(drawn, [np.array(p).reshape(-1, 2).astype(np.int32) for p in polygons], 1)
    assert np.array_equal(drawn.astype(bool), square | island)  # the hole is gone: RLE keeps it
    assert mio.mask_to_polygons(np.zeros((5, 5), bool)) == ([], False)


def test_label_map_paints_small_masks_over_large_and_widens_for_many():
    big = np.zeros((10, 10), bool)
    big[:, :] = True
    small = np.zeros_like(big)
    small[2:4, 2:4] = True
    labels = mio.label_map([small, big])
    assert labels.dtype == np.uint8 and labels[3, 3] == 1 and labels[8, 8] == 2
    many = [np.zeros((2, 200), bool) for _ in range(300)]
    for i, m in enumerate(many):
        m[i % 2, i % 200] = True
    assert mio.label_map(many).dtype == np.uint16


def test_overlay_colours_masks_and_outlines_and_leaves_the_rest():
    image = np.full((30, 40, 3), 100, np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    out = overlay(image, [{"segmentation": rle.compress_rle(rle.encode_rle(mask))}], alpha=0.5, outline_width=1)
    color = instance_colors(1)[0]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], image[~mask])
    edge = mask_outline(mask, 1)
    assert edge.sum() == 2 * (15 + 20) - 4 and np.all(out[edge] == color)
    inner = mask & ~edge
    assert np.allclose(out[inner], np.round(0.5 * 100 + 0.5 * color.astype(float)), atol=1)
    with pytest.raises(ValueError, match="does not fit"):
        overlay(image, [np.zeros((3, 3), bool)])


def test_instance_colors_are_distinct_and_stable():
    colors = instance_colors(50)
    assert len({tuple(c) for c in colors}) == 50
    assert np.array_equal(colors, instance_colors(50))


def test_generator_records_feed_the_writers(tmp_path):
    """Records straight from SamAutomaticMaskGenerator (each output mode) go to every writer."""
    from grounded.sam import SamAutomaticMaskGenerator
    from grounded.testing import tiny_sam

    image = np.zeros((40, 50, 3), np.uint8)
    image[10:30, 10:40] = 220
    model = tiny_sam("vit", image_size=64, seed=0)
    for mode in ("binary_mask", "uncompressed_rle", "coco_rle"):
        gen = SamAutomaticMaskGenerator(model, points_per_side=3, pred_iou_thresh=-1, stability_score_thresh=0,
                                        output_mode=mode)
        records = gen.generate(image)
        assert records
        doc = image_document(Detections.from_sam_records(records, image_size=(40, 50)), "x.png", 40, 50)
        assert [a["area"] for a in doc["annotations"]] == [r["area"] for r in records]
        assert overlay(image, records).shape == image.shape

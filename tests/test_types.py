"""grounded.types: Detections (indexing, filtering, NMS, merging, confidence) and Sample; COCO
conversion is tested with the other formats (test_export_formats.py)."""

import subprocess
import sys
from typing import Any, List, Optional

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from grounded.rle import decode_masks, encode_masks
from grounded.types import Detections, Sample, type_fits, value_fits

# pycocotools (the reference here) warns about numpy 2's copy keyword inside its own code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def square_masks(size=(20, 30), boxes=((0, 0, 10, 10), (5, 5, 15, 12), (20, 2, 30, 20))):
    masks = np.zeros((len(boxes), *size), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return masks


def dets(**extra):
    masks = square_masks()
    return Detections.from_masks(masks, scores=[0.9, 0.5, 0.7], class_id=[0, 1, 0], labels=["cat", "dog", "cat"],
                                 data={"stability": np.array([1.0, 2.0, 3.0], np.float32), "note": ["a", "b", "c"]}, **extra)


def test_masks_are_kept_as_rle_and_decoded_on_access():
    masks = square_masks()
    d = Detections.from_masks(masks)
    assert all(isinstance(r["counts"], str) for r in d.rles)  # compact, JSON-ready
    assert d.image_size == (20, 30)
    assert np.array_equal(d.mask, masks)
    assert np.array_equal(d.mask_of(1), masks[1])
    np.testing.assert_array_equal(d.xyxy, [[0, 0, 10, 10], [5, 5, 15, 12], [20, 2, 30, 20]])
    np.testing.assert_array_equal(d.area, masks.sum(axis=(1, 2)))


def test_rle_is_byte_compatible_with_pycocotools():
    rng = np.random.default_rng(0)
    masks = rng.random((4, 17, 23)) > 0.6
    ours = encode_masks(masks)
    theirs = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in ours] == [r["counts"].decode() for r in theirs]
    assert np.array_equal(decode_masks(ours), masks)
    # uncompressed (list) counts are accepted too
    uncompressed = {"size": [17, 23], "counts": coco_mask.decode(theirs[0]).ravel(order="F").tolist()}
    runs = np.diff(np.flatnonzero(np.diff(np.r_[-1, uncompressed["counts"], -1]) != 0))
    counts = ([0] if uncompressed["counts"][0] else []) + runs.tolist()
    assert np.array_equal(Detections([[0, 0, 1, 1]], rles=[{"size": [17, 23], "counts": counts}]).mask[0], masks[0])


@pytest.mark.parametrize("index, expected", [
    (1, [1]), (-1, [2]), (slice(0, 2), [0, 1]), ([2, 0], [2, 0]), (np.array([True, False, True]), [0, 2]),
    (np.array([], dtype=int), []),
])
def test_indexing_keeps_every_field_together(index, expected):
    d = dets()
    sub = d[index]
    assert isinstance(sub, Detections) and len(sub) == len(expected)
    np.testing.assert_array_equal(sub.xyxy, d.xyxy[expected].reshape(-1, 4))
    np.testing.assert_array_equal(sub.scores, d.scores[expected])
    np.testing.assert_array_equal(sub.class_id, d.class_id[expected])
    assert sub.labels == [d.labels[i] for i in expected]
    assert sub.rles == [d.rles[i] for i in expected]
    np.testing.assert_array_equal(sub.data["stability"], d.data["stability"][expected])
    assert sub.data["note"] == [d.data["note"][i] for i in expected]
    if expected:
        assert np.array_equal(sub.mask, d.mask[expected])


def test_bad_indices_are_refused():
    d = dets()
    with pytest.raises(IndexError):
        d[3]
    with pytest.raises(IndexError):
        d[np.array([True, False])]
    with pytest.raises(IndexError):
        d[[0, 5]]


def test_filter_conditions():
    d = dets()
    assert dets().filter(min_score=0.6).labels == ["cat", "cat"]
    assert d.filter(labels=["dog"]).scores.tolist() == [0.5]
    assert d.filter(class_ids=[0]).labels == ["cat", "cat"]
    assert len(d.filter(min_area=80)) == 2  # 100, 70, 180 pixels
    assert d.filter(d.scores > 0.6, labels=["cat"]).scores.tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ValueError, match="needs scores"):
        Detections([[0, 0, 1, 1]]).filter(min_score=0.5)


def test_nms_per_class_and_agnostic_match_a_plain_implementation():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 9], [50, 50, 60, 60], [51, 50, 61, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.95, 0.3, 0.6])
    d = Detections(boxes, scores=scores, class_id=[0, 0, 1, 0, 0])

    def plain_nms(idx, thr):
        keep = []
        for i in sorted(idx, key=lambda i: -scores[i]):
            if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
                keep.append(i)
        return sorted(keep)

    def iou(a, b):
        w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    agnostic = d.nms(0.5, class_agnostic=True)
    np.testing.assert_array_equal(agnostic.xyxy, boxes[plain_nms(range(5), 0.5)])
    per_class = d.nms(0.5)
    expected = sorted(plain_nms([0, 1, 3, 4], 0.5) + [2])
    np.testing.assert_array_equal(per_class.xyxy, boxes[expected])  # original order kept
    by_label = Detections(boxes, scores=scores, labels=["a", "a", "b", "a", "a"]).nms(0.5)
    np.testing.assert_array_equal(by_label.xyxy, boxes[expected])
    assert len(Detections.empty().replace(scores=[]).nms()) == 0


def test_merge_concatenates_and_refuses_mismatched_parts():
    d = dets()
    merged = Detections.merge([d[:1], Detections.empty((20, 30)), d[1:]])
    assert merged == d
    with pytest.raises(ValueError, match="scores is set in some"):
        Detections.merge([d, Detections([[0, 0, 1, 1]], rles=d.rles[:1], class_id=[0], labels=["x"],
                                        data={"stability": np.ones(1, np.float32), "note": ["z"]})])
    with pytest.raises(ValueError, match="different image sizes"):
        Detections.merge([d, Detections.from_masks(np.zeros((1, 5, 5), bool))])
    assert len(Detections.merge([])) == 0


def test_confidence_is_supervisions_name_for_scores():
    d = Detections([[0, 0, 1, 1], [1, 1, 2, 2]], confidence=[0.2, 0.8])
    assert d.confidence is d.scores and d.scores.dtype == np.float32 and d.scores.tolist() == pytest.approx([0.2, 0.8])
    assert d[d.confidence > 0.5].confidence.tolist() == pytest.approx([0.8])
    d.confidence = [0.4, 0.6]
    assert d.scores.tolist() == pytest.approx([0.4, 0.6])
    with pytest.raises(ValueError, match="not both"):
        Detections([[0, 0, 1, 1]], scores=[1.0], confidence=[1.0])
    with pytest.raises(ValueError, match="1 confidence for 2 boxes"):
        d.confidence = [0.5]


def test_from_sam_records_binary_and_rle_agree():
    masks = square_masks()
    records = [{"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, 1, 1], "predicted_iou": 0.5 + i / 10,
                "point_coords": [[1.0, 2.0]], "stability_score": 0.9, "crop_box": [0, 0, 30, 20]}
               for i, m in enumerate(masks)]
    from_binary = Detections.from_sam_records(records)
    rle_records = [dict(r, segmentation=rle) for r, rle in zip(records, encode_masks(masks))]
    from_rle = Detections.from_sam_records(rle_records)
    assert from_binary == from_rle
    assert from_rle.scores.tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert from_rle.data["stability_score"].tolist() == pytest.approx([0.9] * 3)
    assert from_rle.data["crop_box"][0] == [0, 0, 30, 20]
    np.testing.assert_array_equal(from_rle.xyxy[1], [5, 5, 15, 12])  # boxes from the masks, COCO's way
    empty = Detections.from_sam_records([], image_size=(4, 5))
    assert len(empty) == 0 and empty.has_masks and empty.mask.shape == (0, 4, 5)


def test_constructor_checks_shapes():
    with pytest.raises(ValueError, match="Nx4"):
        Detections([1, 2, 3])
    with pytest.raises(ValueError, match="2 scores for 1 boxes"):
        Detections([[0, 0, 1, 1]], scores=[1, 2])
    with pytest.raises(ValueError, match="boolean"):
        Detections([[0, 0, 1, 1]], mask=np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="not both"):
        Detections([[0, 0, 1, 1]], mask=np.zeros((1, 3, 3), bool), rles=[])


def test_sample_fields_and_extras():
    s = Sample(text="a cat")
    assert s.get("text") == "a cat" and s.get("caption", "none") == "none"
    s.set("depth", 3)
    assert s.extra == {"depth": 3} and s.has("depth") and not s.has("caption")
    s.note("EXIF rotated")
    assert s.meta["notes"] == ["EXIF rotated"]
    types = Sample.field_types()
    assert types["detections"] is Detections and types["image"] is np.ndarray and types["tags"] == List[str]
    assert "meta" not in types


def test_type_fits_rules():
    assert type_fits(List[str], list) and type_fits(list, List[str]) and not type_fits(List[int], List[str])
    assert type_fits(Optional[str], str) and type_fits(bool, int) and not type_fits(str, int)
    assert type_fits(Any, Detections) and not type_fits(np.ndarray, Detections)
    assert value_fits(3, float) and not value_fits("x", float) and value_fits(None, Detections)


def test_import_types_is_light():
    code = ("import sys, grounded.types, grounded.pipeline, grounded.nodes, grounded.io.sources, grounded.io.results\n"
            "print(sorted(m for m in ('torchvision', 'yaml', 'jsonschema', 'pycocotools', 'tqdm', 'cv2', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

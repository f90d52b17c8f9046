"""Which detection each edit works on: one prompt per edit (points, boxes), the detector's class
labels, the target's words, and "left / right / biggest ..." choosing among several."""

import numpy as np
import pytest

from grounded.detections import Detections
from grounded.nodes.edit import ApplyEdits, TargetBoxes, match_targets
from grounded.pipeline import Pipeline
from grounded.types import Sample


def dets(boxes, labels=None, scores=None, size=(100, 200), masks=True, data=None):
    boxes = np.asarray(boxes, np.float32)
    mask = None
    if masks:
        mask = np.zeros((len(boxes), *size), bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            mask[i, y0:y1, x0:x1] = True
    return Detections(boxes, mask=mask, labels=labels, scores=scores, data=data, image_size=size)


def edits(*targets):
    return [{"action": "remove", "target": t, "value": None} for t in targets]


PEOPLE = [[10, 10, 40, 90], [150, 20, 190, 60], [80, 30, 120, 95]]


def test_spatial_words_choose_among_detections_of_one_class():
    d = dets(PEOPLE, labels=["person on the left"] * 3, scores=[0.5, 0.9, 0.7])
    assert match_targets(edits("person on the left"), d) == [0]
    d = dets(PEOPLE, labels=["person"] * 3, scores=[0.5, 0.9, 0.7])
    for target, expected in [("person on the right", 1), ("leftmost person", 0), ("person at the top", 1),
                             ("person at the bottom", 2), ("biggest person", 2), ("smallest person", 1),
                             ("person in the middle", 2), ("person", 1)]:  # no qualifier: the best score
        assert match_targets(edits(target), d) == [expected], target


def test_several_targets_by_class_label_then_by_words():
    d = dets([[0, 0, 50, 50], [60, 0, 120, 50], [130, 0, 190, 50]], labels=["bicycle", "sky", "red car"],
             scores=[0.4, 0.8, 0.6])
    assert match_targets(edits("sky", "bicycle", "red car"), d) == [1, 0, 2]
    assert match_targets(edits("cars", "bicycles", "dog"), d) == [2, 0, None]  # plural words; nothing for dog


def test_prompts_per_edit_and_in_order():
    d = dets([[0, 0, 50, 50], [60, 0, 120, 50]], data={"edit": [1, 0]})
    assert match_targets(edits("cat", "dog"), d) == [1, 0]
    d = dets([[0, 0, 50, 50], [60, 0, 120, 50]])  # segment_points: no labels, one per edit
    assert match_targets(edits("cat", "dog", "bird"), d) == [0, 1, None]


def test_detections_whose_mask_is_empty_are_never_chosen():
    d = dets(PEOPLE, labels=["person"] * 3, scores=[0.5, 0.9, 0.7])
    empty = d.mask.copy()
    empty[1] = False
    d = d.replace(mask=empty)
    assert match_targets(edits("person"), d) == [2]


def test_target_boxes_and_apply_edits_report():
    image = np.full((100, 200, 3), 120, np.uint8)
    image[20:60, 30:80] = (200, 30, 30)
    sample = Sample(image=image, edits=[{"action": "recolor", "target": "square", "value": "blue"}])
    sample = TargetBoxes(boxes=[[30, 20, 80, 60]]).process(sample)
    assert sample.detections.labels == ["square"] and list(sample.detections.data["edit"]) == [0]
    with pytest.raises(ValueError, match="2 boxes for 1 edits"):
        TargetBoxes(boxes=[[0, 0, 1, 1], [0, 0, 2, 2]]).process(Sample(image=image, edits=sample.edits))
    square = np.zeros((100, 200), bool)
    square[20:60, 30:80] = True
    sample.detections = sample.detections.replace(mask=square[None])
    out = Pipeline([ApplyEdits(feather=0)], inputs=["image", "edits", "detections"])(sample)
    assert out.meta["edits"] == [{"action": "recolor", "target": "square", "value": "blue", "detection": 0,
                                  "mask_pixels": 2000}]
    inside = out.edited_image[square].astype(int)
    assert (inside[:, 2] > inside[:, 0]).all()
    grown = np.zeros_like(square)
    grown[18:62, 28:82] = True  # recolour grows the mask by dilate // 3 = 2 pixels
    assert (out.edited_image[~grown] == image[~grown]).all()


def test_missing_target_is_an_error_or_a_note():
    image = np.zeros((100, 200, 3), np.uint8)
    d = dets([[0, 0, 50, 50]], labels=["cat"])
    sample = Sample(image=image, detections=d, edits=edits("dog", "cat"))
    with pytest.raises(ValueError, match="no detection for the target 'dog' \\(found: cat\\)"):
        ApplyEdits().process(sample)
    node = ApplyEdits(missing="skip")
    node.setup(type("Ctx", (), {"models": None})())
    out = node.process(Sample(image=image, detections=d, edits=edits("dog", "cat")))
    assert "skipped" in out.meta["notes"][0] and out.meta["edits"][1]["detection"] == 0

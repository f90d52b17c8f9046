"""Evaluation data sets: every layout loads (tests/make_eval_data.py writes them), the selection
options, and bad input (clear errors, or counted skips)."""

import json
import shutil

import numpy as np
import pytest

from grounded.eval.datasets import DatasetError, Selection, detect_format, load_dataset
from grounded.eval.masks import decode
from make_eval_data import scenes, write_all


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_all(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def shapes():
    return scenes()


def test_every_layout_loads_the_same_objects(data, shapes):
    expected = sum(len(s.masks) for s in shapes)
    for kind in ("coco", "lvis", "labels", "labels_tif", "sa1b", "bsds"):
        ds = load_dataset([str(data[kind])])
        assert ds.format == {"labels_tif": "labels"}.get(kind, kind), kind
        assert len(ds.images) == 6, kind
        objects = sum(len(i.instances) for i in ds.images)
        # BSDS's first annotator also labels the background as a segment.
        assert objects == expected + (6 if kind == "bsds" else 0), kind
        first = ds.images[0]
        masks = decode([o.rle for o in first.instances])
        assert masks.shape[1:] == (first.height, first.width)
        truth = {m.tobytes() for m in shapes[0].masks}
        assert truth <= {m.tobytes() for m in masks}, kind  # the very same masks
    saco = load_dataset([str(p) for p in data["saco"]])
    assert saco.format == "saco" and len(saco.images) == 6
    pairs = [p for im in saco.images for p in im.pairs]
    assert len(pairs) == expected + 12 and all(len(p.annotations) == 3 for p in pairs)
    assert any(not p.exhaustive for p in pairs) and any(not any(p.annotations) for p in pairs)


def test_lvis_fields_and_boundaries(data):
    ds = load_dataset([str(data["lvis"])])
    assert any(im.neg_category_ids for im in ds.images) and any(im.not_exhaustive_category_ids for im in ds.images)
    assert {c["frequency"] for c in ds.categories.values()} == {"r", "c", "f"}
    bsds = load_dataset([str(data["bsds"])])
    annotators = bsds.boundaries(bsds.images[0])
    assert len(annotators) == 2 and annotators[0].sum() > annotators[1].sum() > 0
    coco = load_dataset([str(data["coco"])])
    (outline,) = coco.boundaries(coco.images[0])
    assert outline.any() and outline.shape == (coco.images[0].height, coco.images[0].width)


def test_selection_limit_subset_and_categories(data):
    assert [i.id for i in load_dataset([str(data["coco"])], selection=Selection(limit=2)).images] == [1, 2]
    a = load_dataset([str(data["coco"])], selection=Selection(subset=3, seed=4)).images
    b = load_dataset([str(data["coco"])], selection=Selection(subset=3, seed=4)).images
    c = load_dataset([str(data["coco"])], selection=Selection(subset=3, seed=5)).images
    assert [i.id for i in a] == [i.id for i in b] and len(a) == 3 and [i.id for i in a] != [i.id for i in c]
    circles = load_dataset([str(data["coco"])], selection=Selection(categories=["circle"]))
    assert set(circles.categories) == {1}
    assert all(o.category_id == 1 for im in circles.images for o in im.instances) and circles.images
    with pytest.raises(DatasetError, match="matched no category.*circle, square, triangle"):
        load_dataset([str(data["coco"])], selection=Selection(categories=["hexagon"]))
    with pytest.raises(DatasetError, match="class-agnostic"):
        load_dataset([str(data["labels"])], selection=Selection(categories=["circle"]))


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset([str(tmp_path / "nope")])
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(DatasetError, match="no images to evaluate"):
        load_dataset([str(tmp_path / "empty")])
    (tmp_path / "junk").mkdir()
    with pytest.raises(DatasetError, match="cannot tell what kind of data set"):
        load_dataset([str(tmp_path / "junk")])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot read"):
        load_dataset([str(tmp_path / "bad.json")])


def test_bad_annotations_are_counted_not_fatal(data, tmp_path):
    doc = json.loads(data["coco"].read_text())
    folder = tmp_path / "coco"
    shutil.copytree(data["coco"].parent / "images", folder / "images")
    (folder / "images" / "000000000002.png").unlink()  # an image whose file is gone
    h, w = doc["images"][0]["height"], doc["images"][0]["width"]
    empty = {"size": [h, w], "counts": str(h * w)}
    base = dict(image_id=1, category_id=1, iscrowd=0)
    doc["annotations"] += [
        dict(base, id=901, segmentation={"size": [h, w], "counts": [h * w]}, area=0, bbox=[0, 0, 0, 0]),
        dict(base, id=902, segmentation=doc["annotations"][0]["segmentation"], area=10, bbox=[5, 5, 0, 4]),
        dict(base, id=903, segmentation=doc["annotations"][0]["segmentation"], area=50, bbox=[1, 1, 5, 5], iscrowd=1),
        dict(base, id=904, image_id=999, segmentation=empty, area=1, bbox=[0, 0, 1, 1]),
        dict(base, id=905, category_id=77, segmentation=empty, area=1, bbox=[0, 0, 1, 1]),
    ]
    (folder / "instances.json").write_text(json.dumps(doc))
    ds = load_dataset([str(folder / "instances.json")])
    assert dict(ds.skipped) == {"empty mask": 1, "zero-area box": 1, "crowd annotation (never prompted)": 1,
                                "annotation of an unknown image": 1, "annotation of an unknown category": 1,
                                "image file missing": 1}
    assert len(ds.images) == 5 and "000000000002.png" in ds.examples["image file missing"][0]
    crowd = [o for o in ds.images[0].instances if o.crowd]
    assert len(crowd) == 1 and crowd[0] not in ds.images[0].prompts  # kept for AP, never prompted
    assert ds.summary()["skipped"]["empty mask"]["count"] == 1


def test_label_folders_report_unpaired_files(data, tmp_path):
    folder = tmp_path / "labels"
    shutil.copytree(data["labels"], folder)
    (folder / "labels" / "scene1.png").unlink()
    ds = load_dataset([str(folder)])
    assert len(ds.images) == 5 and ds.skipped["image without a label map"] == 1


def test_saco_files_must_list_the_same_pairs(data, tmp_path):
    other = json.loads(data["saco"][1].read_text())
    other["images"] = other["images"][:-1]
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(DatasetError, match="other image-phrase pairs"):
        load_dataset([str(data["saco"][0]), str(tmp_path / "b.json")])
    with pytest.raises(DatasetError, match="SA-Co/Gold annotation files"):
        detect_format([data["saco"][0], data["labels"]])


def test_label_maps_of_rgb_and_16_bit(tmp_path):
    from PIL import Image

    from grounded.eval.datasets import read_label_map

    labels = np.zeros((8, 8), np.uint16)
    labels[1:3, 1:3], labels[5:7, 4:8] = 300, 7
    Image.fromarray(labels).save(tmp_path / "a.png")
    assert set(np.unique(read_label_map(tmp_path / "a.png"))) == {0, 7, 300}
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[1:3, 1:3] = (0, 1, 44)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    assert set(np.unique(read_label_map(tmp_path / "b.png"))) == {0, 256 + 44}

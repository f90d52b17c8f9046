"""The auto-labelling exports: COCO (captions on image records, categories from tags), YOLO
segmentation (labels + data.yaml) and per-image JSON, checked against the masks that went in and
against pycocotools; one category table for all of them; files readable as a plain open makes them.
No model: a node of the test's own writes known detections."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from grounded.detections import Detections
from grounded.io.results import read_jsonl
from grounded.nodes import WriteCoco
from grounded.nodes.export_formats import WriteJson, WriteYolo
from grounded.pipeline import Node, Pipeline


def shapes(height, width, seed):
    """Two known masks on an image: a disc ("cat") and a rectangle with a hole ("dog")."""
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height * 0.35) ** 2 + (xx - width * 0.3) ** 2 < (min(height, width) * 0.2) ** 2
    rect = np.zeros((height, width), bool)
    rect[int(height * 0.5):int(height * 0.9), int(width * 0.5):int(width * 0.95)] = True
    rect[int(height * 0.65):int(height * 0.75), int(width * 0.65):int(width * 0.8)] = False
    return np.stack([disc, rect])


class KnownLabels(Node):
    """Writes the two known masks, a caption and tags (a stand-in for caption -> tags -> detect -> segment)."""

    name = "known_labels"
    reads = {"image": np.ndarray}
    writes = {"detections": Detections, "caption": str, "tags": list}

    def process(self, sample):
        h, w = sample.image_size
        sample.detections = Detections.from_masks(shapes(h, w, 0), scores=[0.9, 0.6], labels=["cat", "dog"])
        sample.caption = f"a cat and a dog on {sample.image_id}"
        sample.tags = ["cat", "dog", "grass"]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (w, h) in enumerate([(80, 60), (64, 96)]):
        Image.fromarray(np.full((h, w, 3), 40 * i + 60, np.uint8)).save(folder / f"img{i}.png")
    return folder


def rasterize(polygon, width, height):
    img = Image.new("L", (width, height), 0)
    xy = (np.asarray(polygon).reshape(-1, 2) * [width, height]).ravel().tolist()
    ImageDraw.Draw(img).polygon(xy, fill=1, outline=1)
    return np.asarray(img, bool)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_coco_yolo_and_json_hold_the_masks_captions_and_tags(images, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    pipe = Pipeline([KnownLabels(), WriteCoco(), WriteYolo(), WriteJson()])
    report = pipe.run([str(images)], out, progress=False)
    assert report.ok == 2 and report.errors == 0

    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog", "grass"]
    for img in coco.dataset["images"]:
        assert img["caption"] == f"a cat and a dog on {img['item_id']}"
        expected = shapes(img["height"], img["width"], 0)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert [coco.cats[a["category_id"]]["name"] for a in anns] == ["cat", "dog"]
        for ann, mask in zip(anns, expected):
            assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)  # RLE, exact
            assert ann["area"] == mask.sum()

    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "cat", 1: "dog", 2: "grass"} and data["nc"] == 3
    assert (out / "yolo" / data["train"]).is_dir()
    for i, (w, h) in enumerate([(80, 60), (64, 96)]):
        assert Image.open(out / "yolo" / "images" / f"img{i}.png").size == (w, h)
        lines = (out / "yolo" / "labels" / f"img{i}.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["0", "1"]
        for line, mask in zip(lines, shapes(h, w, 0)):
            values = [float(v) for v in line.split()[1:]]
            assert len(values) % 2 == 0 and all(0 <= v <= 1 for v in values)
            # The outer contour only (YOLO has no holes): compare with the mask's holes filled.
            filled = mask.copy()
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            if not mask[rows.mean().astype(int), cols.mean().astype(int)]:
                filled[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = True
            assert iou(rasterize(values, w, h), filled) > 0.9

    doc = json.loads((out / "json" / "img1.json").read_text())
    assert doc["caption"] == "a cat and a dog on img1" and doc["tags"] == ["cat", "dog", "grass"]
    assert (doc["height"], doc["width"]) == (96, 64)
    assert [d["label"] for d in doc["detections"]] == ["cat", "dog"]
    assert doc["detections"][0]["score"] == pytest.approx(0.9)
    x0, y0, x1, y1 = doc["detections"][1]["box_xyxy"]
    assert (x1 - x0, y1 - y0) == (int(64 * 0.95) - int(64 * 0.5), int(96 * 0.9) - int(96 * 0.5))
    rows = read_jsonl(out / "manifest.jsonl")
    assert set(rows[0]["outputs"]) == {"write_coco", "write_yolo", "write_json"}


def test_given_names_fix_the_indices_and_labels_beyond_them_are_added_in_every_format(images, tmp_path):
    out = tmp_path / "out"
    Pipeline([KnownLabels(), WriteYolo(names=["dog"], images="none"), WriteCoco(categories=["dog"])]).run(
        [str(images)], out, progress=False)
    data = yaml.safe_load((out / "yolo" / "data.yaml").read_text())
    assert data["names"] == {0: "dog", 1: "cat"} and "train" not in data  # one table: nothing is dropped
    lines = (out / "yolo" / "labels" / "img0.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["1", "0"]  # cat, dog
    assert not (out / "yolo" / "images").exists()
    coco = json.loads((out / "coco.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}]
    assert [a["category_id"] for a in coco["annotations"][:2]] == [2, 1]


class DetectorBoxes(Node):
    """Masks with the boxes a detector gives: offset from the mask, one starting left of the image and
    one running past its corner (as Grounding DINO's do), as segment_boxes keeps them."""

    name = "detector_boxes"
    reads = {"image": np.ndarray}
    writes = {"detections": Detections}

    def process(self, sample):
        h, w = sample.image_size
        masks = shapes(h, w, 0)
        boxes = [[-7.5, 3.25, w * 0.6, h * 0.7], [w * 0.45, h * 0.4, w + 12.0, h + 9.0]]
        sample.detections = Detections(boxes, mask=masks, scores=[0.8, 0.7], labels=["cat", "dog"],
                                       class_id=[0, 1], data={"mask_score": np.array([0.9, 0.95], np.float32)})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own numpy 2 notice
def test_every_writer_gives_the_masks_bbox_and_area_as_pycocotools_does(images, tmp_path):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    Pipeline([DetectorBoxes(), WriteCoco(), WriteJson()]).run([str(images)], out, progress=False)

    def check(record, detector_box):
        rle = dict(record["segmentation"], counts=record["segmentation"]["counts"].encode())
        assert record["bbox"] == pytest.approx(mask_utils.toBbox(rle).tolist())
        assert record["area"] == int(mask_utils.area(rle))
        assert record["box_xyxy"] == pytest.approx(detector_box)  # the detector's own box, kept beside it

    run_level = json.loads((out / "coco.json").read_text())
    for i, (w, h) in enumerate([(80, 60), (64, 96)]):
        boxes = [[-7.5, 3.25, w * 0.6, h * 0.7], [w * 0.45, h * 0.4, w + 12.0, h + 9.0]]
        item = COCO(str(out / "coco" / f"img{i}.json"))  # each per-image file is a COCO document of its own
        anns = item.loadAnns(item.getAnnIds(imgIds=item.getImgIds()))
        assert [item.cats[a["category_id"]]["name"] for a in anns] == ["cat", "dog"]
        for ann, mask, box in zip(anns, shapes(h, w, 0), boxes):
            assert np.array_equal(item.annToMask(ann).astype(bool), mask)
            check(ann, box)
        for ann, box in zip([a for a in run_level["annotations"] if a["image_id"] == i + 1], boxes):
            check(ann, box)
        for record, box in zip(json.loads((out / "json" / f"img{i}.json").read_text())["detections"], boxes):
            check(record, box)


def test_boxes_without_masks_are_clipped_to_the_image(images, tmp_path):
    from grounded.io.formats import coco_annotations, detection_records

    dets = Detections([[-5, 2, 30, 70]], scores=[0.5], image_size=(60, 80))
    [ann] = coco_annotations(dets)
    assert ann["bbox"] == [0, 2, 30, 58] and ann["area"] == 30 * 58 and "segmentation" not in ann
    [record] = detection_records(dets)
    assert record["box_xyxy"] == [-5, 2, 30, 70] and record["bbox"] == [0, 2, 30, 58]


def test_result_files_get_the_mode_a_plain_open_gives(images, tmp_path):
    import os
    import stat

    for umask in (0o022, 0o002):
        old = os.umask(umask)
        try:
            out = tmp_path / f"out-{umask:o}"
            Pipeline([KnownLabels(), WriteCoco(), WriteYolo(), WriteJson()]).run([str(images)], out, progress=False)
            (out / "plain").write_text("x")
        finally:
            os.umask(old)
        expected = stat.S_IMODE((out / "plain").stat().st_mode)
        assert expected == 0o666 & ~umask
        files = [p for p in out.rglob("*") if p.is_file() and p.name not in ("plain", ".lock")]
        assert len(files) > 10
        assert {p.relative_to(out).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
            p.relative_to(out).as_posix(): oct(expected) for p in files}
    kept = tmp_path / "out-22" / "coco.json"
    kept.chmod(0o640)  # a file that is replaced keeps its mode, as it would under open(path, "w")
    Pipeline([KnownLabels(), WriteCoco(), WriteYolo(), WriteJson()]).run([str(images)], tmp_path / "out-22",
                                                                        progress=False, resume=True)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_yolo_run_level_files_survive_a_resume(images, tmp_path):
    out = tmp_path / "out"
    pipe = Pipeline([KnownLabels(), WriteYolo()])
    pipe.run([str(images / "img0.png")], out, progress=False)
    (out / "yolo" / "labels" / "img0.txt").unlink()  # as if a kill had come before the end of the run
    pipe.run([str(images / "img0.png"), str(images / "img1.png")], out, progress=False, resume=True)
    assert sorted(p.name for p in (out / "yolo" / "labels").iterdir()) == ["img0.txt", "img1.txt"]

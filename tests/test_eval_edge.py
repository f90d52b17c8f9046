"""`grounded eval` on the data a demanding user gives it. Each test failed before its fix."""

import json

import numpy as np
import pytest
from PIL import Image

from grounded.eval import Options, evaluate, load_dataset, load_segmenters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_points_and_boxes_on_a_data_set_without_objects(tmp_path):
    """Every label map all background (reviewed empty images): the figures are NaN over 0 objects and
    the report is written. Before, the points summary crashed reshaping 0 click curves, after every
    image had run, and no results.json was written."""
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    save_pretrained(tiny_sam("vit", seed=3), tmp_path / "sam")
    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.full((40, 50, 3), 60 * k, np.uint8)).save(tmp_path / "data" / "images" / f"{k}.png")
        Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "data" / "labels" / f"{k}.png")
    results = evaluate(["points", "boxes"], load_dataset([str(tmp_path / "data")]),
                       load_segmenters([str(tmp_path / "sam")]), tmp_path / "out", Options(clicks=3, bootstrap=10),
                       progress=False)
    for task, figure in (("points", "center_top"), ("points", "NoC@85"), ("points", "mIoU@3"), ("boxes", "mIoU")):
        stat = results["tasks"][task]["results"]["sam"]["metrics"][figure]
        assert stat["n"] == 0 and np.isnan(stat["value"]) and stat["ci95"] is None, (task, figure)
    assert results["tasks"]["points"]["results"]["sam"]["images"] == 2 and results["errors"]["count"] == 0
    written = json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=float)
    assert written["tasks"]["points"]["results"]["sam"]["metrics"]["center_top"]["n"] == 0
    assert (tmp_path / "out" / "points_miou_per_click.png").is_file()


def test_json_data_sets_without_image_sizes_take_them_from_the_files(tmp_path):
    """COCO and SA-1B files written by tools that leave out height and width (before: KeyError 'height'
    while loading); an image that is not there is counted as missing, as one with a size is."""
    from grounded.eval.masks import encode

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    square = np.zeros((1, 40, 50), bool)
    square[0, 3:9, 4:12] = True
    (tmp_path / "coco.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 20, 1, 20, 20]]},
                        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": encode(square)[0]}]}))
    coco = load_dataset([str(tmp_path / "coco.json")])
    (image,) = coco.images
    assert (image.height, image.width) == (40, 50) and [i.area for i in image.instances][1] == 48
    assert coco.skipped["image file missing"] == 1
    (tmp_path / "sa").mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "sa" / "sa_1.jpg")
    (tmp_path / "sa" / "sa_1.json").write_text(json.dumps({"image": {"file_name": "sa_1.jpg"},
                                                           "annotations": [{"segmentation": encode(square)[0]}]}))
    (image,) = load_dataset([str(tmp_path / "sa")]).images
    assert (image.height, image.width) == (40, 50) and image.instances[0].area == 48


@pytest.mark.parametrize("selection", [dict(limit=-1), dict(subset=-2)])
def test_a_limit_or_subset_below_one_is_refused(tmp_path, selection):
    """Before: --limit -1 silently dropped the last image, --subset -2 failed inside numpy."""
    from grounded.eval import Selection
    from grounded.eval.datasets import DatasetError

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k in range(2):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{k}.png")
        Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "labels" / f"{k}.png")
    name = next(iter(selection))
    with pytest.raises(DatasetError, match=f"--{name} must be at least 1"):
        load_dataset([str(tmp_path)], selection=Selection(**selection))


def test_a_label_map_of_many_instances_is_read_in_bounded_memory():
    """A label map of 1024 cells at 512 x 512: their masks all at once take 268 MB (before: one
    stack of them all); a chunk at a time, a few MB. The instances are the same either way."""
    import tracemalloc

    from grounded.eval.datasets import instances_from_labels

    labels = (np.arange(512 * 512).reshape(512, 512) // 256 + 1).astype(np.uint16)  # 1024 strips of 256 pixels
    tracemalloc.start()
    try:
        instances = instances_from_labels(labels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MB"
    assert len(instances) == 1024 and all(i.area == 256 for i in instances)
    assert instances[3].id == 4 and instances[3].bbox == (256.0, 1.0, 256.0, 1.0)


def test_areas_of_more_than_255_masks():
    """pycocotools 2.0.11's area() fails for 256 or more RLEs under numpy 2 (OverflowError): before,
    an image's matches with 256+ proposals (max 1000) or LVIS detections (max 300) were lost to it."""
    from grounded.eval.masks import encode, rle_areas

    masks = np.zeros((600, 16, 16), bool)
    for k in range(600):
        masks[k, : k % 16 + 1, : k // 16 % 16 + 1] = True
    np.testing.assert_array_equal(rle_areas(encode(masks)), masks.sum((1, 2)))


def test_resume_refuses_a_model_retrained_into_the_same_folder(tmp_path):
    """Before: `--resume` kept the old weights' records of finished images and evaluated the rest
    with the new weights, one table mixing two models."""
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    labels = np.zeros((24, 24), np.uint8)
    labels[4:12, 6:18] = 1
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(tmp_path / "data" / "images" / "a.png")
    Image.fromarray(labels).save(tmp_path / "data" / "labels" / "a.png")
    dataset = load_dataset([str(tmp_path / "data")])
    options = Options(clicks=1, bootstrap=0)
    save_pretrained(tiny_sam("vit", seed=3), tmp_path / "final")
    evaluate(["boxes"], dataset, load_segmenters([str(tmp_path / "final")]), tmp_path / "out", options, progress=False)
    evaluate(["boxes"], dataset, load_segmenters([str(tmp_path / "final")]), tmp_path / "out", options, resume=True,
             progress=False)  # the same weights resume
    save_pretrained(tiny_sam("vit", seed=4), tmp_path / "final")  # retrained
    with pytest.raises(ValueError, match="this run.s weights of model final differ from the run in"):
        evaluate(["boxes"], dataset, load_segmenters([str(tmp_path / "final")]), tmp_path / "out", options,
                 resume=True, progress=False)

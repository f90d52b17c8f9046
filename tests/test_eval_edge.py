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

"""`grounded segment` as a user runs it: prompts in, COCO/PNG masks and an overlay out."""

import json

import numpy as np
import pytest
from PIL import Image

from grounded.cli import main
from grounded.sam import save_pretrained
from grounded.testing import tiny_sam


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return str(save_pretrained(tiny_sam("vit", seed=3), tmp_path_factory.mktemp("tiny_sam")))


def _image(path, h=90, w=120):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_boxes_give_one_mask_each_in_every_format(tmp_path, tiny_model_dir, capsys):
    from pycocotools import mask as mask_utils

    image = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(["segment", image, "--model", tiny_model_dir, "--box", "5,5,60,60", "--box", "30,20,110,85",
                 "--out", str(out), "--format", "coco,png,polygons"])
    assert code == 0
    coco = json.loads((out / "a.coco.json").read_text())
    assert len(coco["annotations"]) == 2
    for ann in coco["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert mask_utils.decode(rle).shape == (90, 120)
    assert (out / "a_overlay.png").is_file()
    assert Image.open(out / "a_overlay.png").size == (120, 90)
    assert "2 masks" in capsys.readouterr().out


def test_bad_prompts_and_files_get_clear_messages(tmp_path, tiny_model_dir, capsys):
    image = _image(tmp_path / "a.png")
    assert main(["segment", image, "--model", tiny_model_dir, "--out", str(tmp_path / "o")]) == 1
    assert "give prompts" in capsys.readouterr().err
    assert main(["segment", image, "--model", tiny_model_dir, "--box", "50,5,10,60", "--out", str(tmp_path / "o")]) == 1
    assert "x1 < x0" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["segment", str(broken), image, "--model", tiny_model_dir, "--point", "30,30", "--out", str(tmp_path / "o")])
    assert code == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.out + captured.err and "broken.jpg" in captured.out + captured.err
    assert (tmp_path / "o" / "a_overlay.png").is_file()


def test_auto_writes_masks_and_overlay(tmp_path, tiny_model_dir):
    image = _image(tmp_path / "b.png")
    out = tmp_path / "auto"
    code = main(["segment", image, "--auto", "--points-per-side", "4", "--model", tiny_model_dir,
                 "--out", str(out), "--format", "coco,png"])
    assert code == 0
    coco = json.loads((out / "b.coco.json").read_text())
    assert coco["images"][0]["height"] == 90 and coco["images"][0]["width"] == 120
    assert (out / "b_overlay.png").is_file() and (out / "b_labels.png").is_file()

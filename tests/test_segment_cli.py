"""`grounded segment` as a user runs it: prompts in, COCO/PNG/polygon masks and overlays out,
through the same nodes and runner as `grounded run`."""

import json

import numpy as np
import pytest
from PIL import Image

from grounded.cli import main
from grounded.io.results import read_jsonl
from grounded.sam import save_pretrained
from grounded.testing import tiny_sam


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return str(save_pretrained(tiny_sam("vit", seed=3), tmp_path_factory.mktemp("tiny_sam")))


def _image(path, h=90, w=120, seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_boxes_give_one_mask_each_in_every_format(tmp_path, tiny_model_dir, capsys):
    from pycocotools import mask as mask_utils

    image = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(["segment", image, "--model", tiny_model_dir, "--box", "5,5,60,60", "--box", "30,20,110,85",
                 "--out", str(out), "--format", "coco,png,polygons", "--no-progress"])
    assert code == 0
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == 2
    for ann in coco["annotations"]:
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert mask_utils.decode(rle).shape == (90, 120)
    assert Image.open(out / "overlays" / "a.png").size == (120, 90)
    assert np.asarray(Image.open(out / "masks" / "a.png")).shape == (90, 120)
    assert sorted(p.name for p in (out / "masks" / "a").iterdir()) == ["0000.png", "0001.png"]
    assert len(json.loads((out / "polygons" / "a.json").read_text())["instances"]) == 2
    assert "2 masks" in capsys.readouterr().out


def test_bad_prompts_and_files_get_clear_messages(tmp_path, tiny_model_dir, capsys):
    image = _image(tmp_path / "a.png")
    assert main(["segment", image, "--model", tiny_model_dir, "--out", str(tmp_path / "o")]) == 1
    assert "give prompts" in capsys.readouterr().err
    assert main(["segment", image, "--model", tiny_model_dir, "--box", "50,5,10,60", "--out", str(tmp_path / "o")]) == 1
    assert "x1 < x0" in capsys.readouterr().err
    assert main(["segment", image, "--model", tiny_model_dir, "--point", "3,4,2", "--out", str(tmp_path / "o")]) == 1
    assert "LABEL is 1" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["segment", str(broken), image, "--model", tiny_model_dir, "--point", "30,30", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert "skipped" in captured.out + captured.err and "broken.jpg" in captured.out + captured.err
    assert (tmp_path / "o" / "overlays" / "a.png").is_file()
    assert [row["id"] for row in read_jsonl(tmp_path / "o" / "errors.jsonl")] == ["broken"]


def test_auto_writes_masks_and_overlay(tmp_path, tiny_model_dir):
    image = _image(tmp_path / "b.png")
    out = tmp_path / "auto"
    code = main(["segment", image, "--auto", "--points-per-side", "4", "--model", tiny_model_dir,
                 "--out", str(out), "--format", "coco,png", "--no-progress"])
    assert code == 0
    coco = json.loads((out / "coco.json").read_text())
    assert coco["images"][0]["height"] == 90 and coco["images"][0]["width"] == 120
    assert (out / "overlays" / "b.png").is_file() and (out / "masks" / "b.png").is_file()


def test_the_real_input_is_named_and_two_images_of_one_name_both_survive(tmp_path, tiny_model_dir):
    first, second = _image(tmp_path / "a" / "coffee.jpg", seed=1), _image(tmp_path / "b" / "coffee.jpg", seed=2)
    out = tmp_path / "out"
    code = main(["segment", first, second, "--model", tiny_model_dir, "--box", "5,5,60,60", "--out", str(out),
                 "--format", "coco,polygons", "--no-progress"])
    assert code == 0
    coco = json.loads((out / "coco.json").read_text())
    assert [(i["file_name"], i["item_id"]) for i in coco["images"]] == [(first, "coffee"), (second, "coffee-2")]
    per_image = [json.loads((out / "coco" / f"{name}.json").read_text()) for name in ("coffee", "coffee-2")]
    assert [d["images"][0]["file_name"] for d in per_image] == [first, second]
    assert per_image[0]["annotations"][0]["segmentation"] != per_image[1]["annotations"][0]["segmentation"]
    assert json.loads((out / "polygons" / "coffee-2.json").read_text())["image"] == second
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["coffee-2.png", "coffee.png"]


def test_a_point_outside_one_image_skips_and_reports_that_image_only(tmp_path, tiny_model_dir, capsys):
    big, small = _image(tmp_path / "big.png"), _image(tmp_path / "small.png", h=40, w=50)
    out = tmp_path / "out"
    code = main(["segment", big, small, "--model", tiny_model_dir, "--point", "80,60", "--out", str(out), "--no-progress"])
    assert code == 0
    errors = read_jsonl(out / "errors.jsonl")
    assert [e["id"] for e in errors] == ["small"] and "outside the 50x40 image" in errors[0]["error"]
    assert [row["id"] for row in read_jsonl(out / "manifest.jsonl") if row["status"] == "ok"] == ["big"]
    assert (out / "coco" / "big.json").is_file() and "1 failed" in capsys.readouterr().out


def test_options_are_checked_before_any_model_loads(tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    out = tmp_path / "out"
    # The model does not exist: had it been loaded first, that would be the error.
    assert main(["segment", image, "--model", str(tmp_path / "no-model"), "--auto", "--format", "coco,tiff",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--format 'coco,tiff': unknown tiff" in err and "choose from coco, png, polygons, overlay" in err
    assert not out.exists()


def test_device_auto_is_the_default_and_cuda_without_a_gpu_is_explained(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import torch

    image = _image(tmp_path / "a.png")
    assert main(["segment", image, "--model", tiny_model_dir, "--point", "30,30", "--device", "auto",
                 "--out", str(tmp_path / "auto"), "--no-progress"]) == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main(["segment", image, "--model", tiny_model_dir, "--point", "30,30", "--device", "cuda",
                 "--out", str(tmp_path / "cuda")]) == 1
    err = capsys.readouterr().err
    assert "--device 'cuda': torch sees no CUDA GPU" in err and "use --device cpu" in err
    assert main(["segment", image, "--model", tiny_model_dir, "--point", "30,30", "--device", "gpu0",
                 "--out", str(tmp_path / "bad")]) == 1
    assert "'gpu0' is not a device" in capsys.readouterr().err


def test_help_states_every_default():
    import argparse

    from grounded.commands import segment

    parser = argparse.ArgumentParser()
    segment.add_cli(parser.add_subparsers())
    command = parser._subparsers._group_actions[0].choices["segment"]
    for action in command._actions:
        if action.default not in (None, False, [], argparse.SUPPRESS) and action.dest != "func":
            assert "default" in (action.help or ""), f"--{action.dest}'s help does not say its default"


def test_every_device_option_says_auto_is_its_default():
    """Issue 28: one meaning of auto everywhere, and each command's --help says its default."""
    from grounded.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    with_device = {name: action for name, command in commands.items() for action in command._actions
                   if "--device" in action.option_strings}
    assert {"segment", "edit", "eval", "demo"} <= set(with_device), sorted(with_device)
    for name, action in with_device.items():
        assert action.default in ("auto", None), f"grounded {name} --device defaults to {action.default!r}"
        assert "(default auto)" in action.help and "cuda:N" in action.help, f"grounded {name} --device: {action.help}"

"""Running a pipeline over data (grounded.pipeline.runner): awkward images processed, bad files
recorded and skipped, the journal, the manifest, COCO assembly and resuming. Tiny random SAM."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from grounded.io.results import read_jsonl
from grounded.pipeline import ModelCache, Pipeline, PipelineError
from grounded.pipeline.spec import load_pipeline


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    return str(save_pretrained(tiny_sam("vit"), tmp_path_factory.mktemp("tiny_sam")))


def auto_masks(model_dir, **more):
    overrides = [f"model={model_dir}", "device=cpu", "points_per_side=2", "segment_auto.pred_iou_thresh=0",
                 "segment_auto.stability_score_thresh=0"] + [f"{k}={v}" for k, v in more.items()]
    return load_pipeline("auto_masks", overrides)


def picture(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def png_claiming(width, height):
    """A PNG whose header claims width x height (a decompression bomb's shape) with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def awkward_images(folder):
    """Valid images that must be processed (name -> expected (height, width), a word of the note)."""
    folder.mkdir(parents=True, exist_ok=True)
    rotated = Image.fromarray(picture(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display": the viewer shows it 20 wide, 40 tall
    rotated.save(folder / "exif.jpg", exif=exif)
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(picture(30, 20)).convert("P").save(folder / "palette.png")
    Image.fromarray(picture(16, 16)[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([picture(18, 12), np.full((12, 18), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray((np.arange(20 * 30).reshape(20, 30) * 90).astype(np.uint16)).save(folder / "deep16.png")
    frames = [Image.fromarray(picture(22, 14, seed=s)) for s in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(picture(1, 1)).save(folder / "one.png")
    Image.fromarray(picture(26, 18)).save(folder / "UPPER.JPG")
    return {"exif": ((40, 20), "EXIF"), "cmyk": ((16, 24), "CMYK"), "palette": ((20, 30), "from P"),
            "gray": ((16, 16), "from L"), "rgba": ((12, 18), "transparency"), "deep16": ((20, 30), "I;16"),
            "anim": ((14, 22), "3 frames: used the first"), "one": ((1, 1), None), "UPPER": ((18, 26), None)}


def bad_files(folder):
    """Files that must be recorded as errors (name -> a word of the reason)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "tmp.jpg"
    Image.fromarray(picture(64, 64)).save(good)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    return {"truncated": "truncated", "corrupt": "image", "empty": "empty", "text": "not an image",
            "bomb": "decompression bomb", "dangling": "broken symbolic link"}


def test_awkward_images_are_processed_and_bad_files_recorded(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    expected = awkward_images(data)
    bad = bad_files(data / "bad")
    out = tmp_path / "out"
    report = auto_masks(tiny_model_dir).run([data], out, progress=False)

    assert (report.total, report.ok, report.errors, report.processed) == (len(expected) + len(bad), len(expected), len(bad),
                                                                          len(expected) + len(bad))
    rows = read_jsonl(out / "manifest.jsonl")
    by_id = {r["id"]: r for r in rows}
    assert len(rows) == len(by_id) == len(expected) + len(bad)
    for name, ((h, w), note) in expected.items():
        row = by_id[name]
        assert row["status"] == "ok" and (row["height"], row["width"]) == (h, w), row
        if note:
            assert any(note in n for n in row.get("notes", [])), row
        overlay = Image.open(out / row["outputs"]["write_overlays"])
        assert overlay.size == (w, h)  # upright, as a viewer shows it
    errors = {e["id"]: e for e in read_jsonl(out / "errors.jsonl")}
    assert set(errors) == {f"bad/{n}" for n in bad}
    for name, word in bad.items():
        assert errors[f"bad/{name}"]["stage"] == "load" and word in errors[f"bad/{name}"]["error"], errors[f"bad/{name}"]

    coco = json.loads((out / "coco.json").read_text())
    assert [img["item_id"] for img in coco["images"]] == [r["id"] for r in rows if r["status"] == "ok"]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) > 0
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    for ann in coco["annotations"]:
        img = coco["images"][ann["image_id"] - 1]
        assert ann["segmentation"]["size"] == [img["height"], img["width"]]


def test_unreadable_file_is_recorded(tmp_path, tiny_model_dir, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.fromarray(picture(8, 8)).save(folder / "locked.png")
    os.chmod(folder / "locked.png", 0)
    if os.geteuid() == 0:  # root reads whatever the permissions say: make the read fail as it would for a user
        import pathlib

        read_bytes = pathlib.Path.read_bytes

        def refuse(path):
            if path.name == "locked.png":
                raise PermissionError(13, "Permission denied", str(path))
            return read_bytes(path)

        monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    report = auto_masks(tiny_model_dir).run([folder], tmp_path / "out", progress=False)
    assert report.errors == 1 and "permission denied" in report.error_rows[0]["error"]


def test_resume_redoes_only_unfinished_items_and_keeps_coco_whole(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        Image.fromarray(picture(20 + i, 16, seed=i)).save(data / f"img{i}.png")
    out = tmp_path / "out"
    pipe = auto_masks(tiny_model_dir, batch_size=2)
    with ModelCache() as models:
        first = pipe.run([data], out, models=models, progress=False)
        assert first.ok == 5
        # As if killed after three items: the journal keeps three lines; the other items' files stay, stale.
        lines = (out / "journal.jsonl").read_text().splitlines(keepends=True)
        (out / "journal.jsonl").write_text("".join(lines[:3]) + lines[3][:10])
        os.remove(out / "coco.json")
        with pytest.raises(RuntimeError, match=r"already holds a run \(3 items finished\); pass --resume"):
            pipe.run([data], out, models=models, progress=False)
        with pytest.raises(RuntimeError, match="the pipeline differs") as changed:
            auto_masks(tiny_model_dir, points_per_side=3, device="auto", **{"write_coco.items_dir": "per_item"}).run(
                [data], out, models=models, resume=True, progress=False)
        # issue 28: the changed parameters, old and new value (a device does not matter), not a JSON dump
        said = str(changed.value)
        assert "segment_auto.points_per_side was 2, now 3; write_coco.items_dir was \"coco\", now \"per_item\"; resume with" in said
        assert "device" not in said and '"params"' not in said and len(said) < 400, said
        second = pipe.run([data], out, models=models, resume=True, progress=False)
        assert len(models) == 2  # one model (and its predictor) for all three runs
    assert (second.done_before, second.processed, second.ok) == (3, 2, 5)
    entries = read_jsonl(out / "journal.jsonl")
    assert sorted(e["id"] for e in entries) == [f"img{i}" for i in range(5)]  # each once, nothing redone
    coco = json.loads((out / "coco.json").read_text())
    assert [img["item_id"] for img in coco["images"]] == [f"img{i}" for i in range(5)]
    assert [r["id"] for r in read_jsonl(out / "manifest.jsonl")] == [f"img{i}" for i in range(5)]
    # a device change does not stop a resume; nothing is left to do
    third = auto_masks(tiny_model_dir, device="auto").run([data], out, resume=True, progress=False)
    assert third.processed == 0 and third.ok == 5


def test_output_folder_inside_the_input_folder_is_not_read_back(tmp_path, tiny_model_dir):
    Image.fromarray(picture(12, 10)).save(tmp_path / "a.png")
    pipe = auto_masks(tiny_model_dir)
    pipe.run([tmp_path], tmp_path / "out", progress=False)
    again = pipe.run([tmp_path], tmp_path / "out", resume=True, progress=False)
    assert again.total == 1  # the overlays in out/ are not inputs


def test_wiring_is_checked_against_what_the_inputs_give(tmp_path, tiny_model_dir):
    Image.fromarray(picture(12, 10)).save(tmp_path / "a.png")
    points = load_pipeline("point_masks", [f"model={tiny_model_dir}", "device=cpu"])
    with pytest.raises(PipelineError, match="(?s)reads 'points'.*JSONL manifest"):
        points.run([tmp_path / "a.png"], tmp_path / "out", progress=False)
    manifest = tmp_path / "clicks.jsonl"
    manifest.write_text('{"image": "a.png", "points": [[3, 4], [[6, 5, 1], [1, 1, 0]]]}\n'
                        '{"image": "a.png", "id": "bad-points", "points": [[300, 4]]}\n'
                        '{"image": "a.png", "id": "wrong-type", "points": "3,4"}\n')
    report = points.run([manifest], tmp_path / "out", progress=False)
    assert report.ok == 1 and report.errors == 2
    errors = {e["id"]: e for e in report.error_rows}
    assert errors["bad-points"]["stage"] == "segment_points" and "outside" in errors["bad-points"]["error"]
    assert errors["wrong-type"]["stage"] == "load" and "'points' must be list" in errors["wrong-type"]["error"]
    ok = read_jsonl(tmp_path / "out" / "manifest.jsonl")[0]
    assert ok["detections"] == 2 and set(ok["outputs"]) == {"write_coco", "write_masks", "write_overlays"}
    labels = np.asarray(Image.open(tmp_path / "out" / ok["outputs"]["write_masks"]))
    assert labels.shape == (10, 12) and labels.max() <= 2


def test_python_api_with_a_list_of_nodes(tmp_path, tiny_model_dir):
    from grounded.nodes import SegmentAuto, WriteCoco, WriteMasks

    Image.fromarray(picture(12, 10)).save(tmp_path / "a.png")
    pipe = Pipeline([SegmentAuto(model=tiny_model_dir, device="cpu", points_per_side=2, pred_iou_thresh=0.0,
                                 stability_score_thresh=0.0),
                     WriteCoco(file="masks.json"), WriteMasks(style="binary")])
    report = pipe.run(tmp_path / "a.png", tmp_path / "out", progress=False)
    assert report.ok == 1
    row = read_jsonl(tmp_path / "out" / "manifest.jsonl")[0]
    masks = sorted((tmp_path / "out" / row["outputs"]["write_masks"]).iterdir())
    assert len(masks) == row["detections"] and (tmp_path / "out" / "masks.json").exists()


def test_model_by_checkpoint_file_and_a_missing_hub_id(tmp_path, tiny_model_dir):
    """What `--set model=...` takes besides a known name: a checkpoint file (as sam_vit_h_4b8939.pth
    would be) runs; a hub id that is not in the offline cache fails before any item, saying where it looked."""
    import torch

    from grounded.sam import from_pretrained

    checkpoint = tmp_path / "tiny.pth"
    torch.save(from_pretrained(tiny_model_dir).state_dict(), checkpoint)
    Image.fromarray(picture(12, 10)).save(tmp_path / "a.png")
    report = auto_masks(checkpoint).run([tmp_path / "a.png"], tmp_path / "out", progress=False)
    assert report.ok == 1
    with pytest.raises(FileNotFoundError, match="Hugging Face hub id 'facebook/sam-vit-nothing'"):
        auto_masks("facebook/sam-vit-nothing").run([tmp_path / "a.png"], tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2" / "journal.jsonl").exists() or not read_jsonl(tmp_path / "out2" / "journal.jsonl")


def test_retry_errors_after_fixing_a_file(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(picture(12, 10)).save(data / "good.png")
    (data / "fixme.png").write_bytes(b"")
    pipe = auto_masks(tiny_model_dir)
    assert pipe.run([data], tmp_path / "out", progress=False).errors == 1
    Image.fromarray(picture(14, 10)).save(data / "fixme.png")
    assert pipe.run([data], tmp_path / "out", resume=True, progress=False).errors == 1  # errors are final...
    report = pipe.run([data], tmp_path / "out", resume=True, retry_errors=True, progress=False)  # ...unless retried
    assert (report.processed, report.ok, report.errors) == (1, 2, 0)
    assert [r["status"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")] == ["ok", "ok"]
    assert read_jsonl(tmp_path / "out" / "errors.jsonl") == []


def test_encoder_backends_give_the_same_masks(tmp_path, tiny_model_dir, monkeypatch):
    """`encoder_backend=onnxruntime` or `openvino` on a SAM node: the image encoder runs from its
    export (made once into $GROUNDED_CACHE/onnx) and the masks equal the torch encoder's."""
    from grounded.sam.onnx_encoder import OnnxImageEncoder, OpenVinoImageEncoder

    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))
    Image.fromarray(picture(40, 30)).save(tmp_path / "a.png")
    outputs = {}
    for backend in ("torch", "onnxruntime", "openvino"):
        report = auto_masks(tiny_model_dir, **{"segment_auto.encoder_backend": backend}).run([tmp_path / "a.png"], tmp_path / backend,
                                                                          progress=False)
        assert report.ok == 1
        outputs[backend] = read_jsonl(tmp_path / backend / "manifest.jsonl")[0]["detections"]
    assert outputs["torch"] == outputs["onnxruntime"] == outputs["openvino"] > 0
    assert len(list((tmp_path / "cache" / "onnx").glob("*/*.onnx"))) == 1  # one export serves both runtimes
    from grounded.nodes.segment import sam_predictor

    with ModelCache() as models:
        predictor = sam_predictor(models, tiny_model_dir, "cpu", None, "onnxruntime")
        assert isinstance(predictor.model.image_encoder, OnnxImageEncoder)
        assert sam_predictor(models, tiny_model_dir, "cpu", None, "onnxruntime") is predictor
        assert isinstance(sam_predictor(models, tiny_model_dir, "cpu", None, "openvino").model.image_encoder, OpenVinoImageEncoder)
        assert not isinstance(sam_predictor(models, tiny_model_dir, "cpu").model.image_encoder, OnnxImageEncoder)
        with pytest.raises(ValueError, match="encoder_backend 'tensorrt'"):
            sam_predictor(models, tiny_model_dir, "cpu", None, "tensorrt")


def test_progress_moves_per_image_and_within_each_image(tmp_path, tiny_model_dir):
    """Issue 19: a batch of 2 images through automatic masks (4 decoder batches per image) moves
    the progress forward within every image, not once per batch."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(picture(48, 32, seed=i)).save(inputs / f"p{i}.png")
    positions = []
    report = auto_masks(tiny_model_dir, points_per_side=4, **{"segment_auto.points_per_batch": 4}).run(
        [str(inputs)], tmp_path / "out", progress=lambda done, total: positions.append((done, total)))
    assert report.ok == 2 and {total for _, total in positions} == {2}
    done = [d for d, _ in positions]
    assert done == sorted(done) and len(set(done)) == len(done) and done[-1] == 2
    for image in range(2):  # every image's decoder batches move it: 1/4, 2/4, 3/4 of the image at least
        within = [d for d in done if image < d < image + 1]
        assert len(within) >= 3, (image, done)


def test_progress_bar_counts_images_with_fractions_and_only_forward(capsys):
    from grounded.pipeline.runner import RunProgress

    shown = RunProgress(8, 1, "auto_masks", True)
    shown.batch_started(4)
    shown.within_batch(0.6)
    shown._bar.refresh()
    shown.within_batch(0.2)  # another node starting its own share of the batch does not move it back
    assert shown.position == 1 + 0.6 * 4
    shown.finished(4, failed=1)
    shown.close()
    err = capsys.readouterr().err
    assert "3.4/8" in err and "5/8" in err and "img/s" in err and "failed=1" in err

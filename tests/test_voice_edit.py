"""Voice editing end to end: espeak-ng speech -> the real Whisper tiny.en -> edits -> targets ->
SAM -> edit, through `grounded run pipelines/voice_edit*.yaml` and `grounded edit`; with tiny
random detector, SAM and inpainting models, and with the real MobileSAM and a point."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grounded.cli import main
from grounded.edit.colors import color_rgb
from grounded.edit.colorspace import hue_distance, srgb_to_oklch
from grounded.edit.local import dilate
from grounded.io.image import load_image
from grounded.testing.speech import espeak_missing, speak

REPO = Path(__file__).resolve().parents[1]
COFFEE = REPO / "samples" / "coffee.jpg"
SPOON, CUP, TABLE = (365, 285), (300, 225), (40, 360)  # points on samples/coffee.jpg


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def say(tmp_path_factory):
    if espeak_missing():
        pytest.skip(espeak_missing())
    folder = tmp_path_factory.mktemp("said")
    return lambda text: speak(text, folder / (text.replace(" ", "_") + ".wav"))


def _png(path):
    return np.array(Image.open(path))


def _outside_unchanged(original, edited, mask, grow):
    grown = dilate(mask, grow)
    return bool((edited[~grown] == original[~grown]).all())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_espeak_tiny_en_tiny_detector_tiny_sam_tiny_inpainting(say, tmp_path):
    """The whole of pipelines/voice_edit.yaml: every stage a real code path, the models tiny and random
    except Whisper (the real tiny.en), so only the transcript and the wiring are meaningful."""
    pytest.importorskip("diffusers")
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam
    from grounded.testing.diffusion import tiny_sd_inpaint
    from grounded.testing.dino import tiny_hf

    detector = tiny_hf(tmp_path / "tiny-dino")
    # seed 4: this random SAM's single-mask output covers about a quarter of the image (seed 0's is empty)
    sam = save_pretrained(tiny_sam("vit", seed=4), tmp_path / "tiny-sam")
    inpainter = tiny_sd_inpaint(tmp_path / "tiny-sd")
    image = load_image(COFFEE)[::4, ::4].copy()  # 150x100: not a multiple of 8 either way
    Image.fromarray(image).save(tmp_path / "coffee.png")
    shutil.copy(say("change the dog to a monkey"), tmp_path / "command.wav")
    (tmp_path / "edits.jsonl").write_text(json.dumps({"image": "coffee.png", "audio_path": "command.wav"}) + "\n")

    code = main(["run", str(REPO / "pipelines" / "voice_edit.yaml"), str(tmp_path / "edits.jsonl"), "--out",
                 str(tmp_path / "out"), "--fail-on-error", "--set", f"detector={detector}", "--set", f"sam={sam}",
                 "--set", f"inpaint_model={inpainter}", "--set", "steps=2", "--set", "device=cpu",
                 "--set", "detect.box_threshold=0.0", "--set", "detect.size=128", "--set", "detect.max_size=200"])
    out = tmp_path / "out"
    errors = (out / "errors.jsonl").read_text()
    assert code == 0, errors
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["status"] == "ok"
    assert row["notes"] == ["heard: 'Change the dog to a monkey.'", "edits: replace 'dog' -> 'monkey'"]
    edited = _png(out / row["outputs"]["write_edited"])
    mask = _png(out / row["outputs"]["write_edited.mask0"]) > 0
    assert edited.shape == image.shape and mask.shape == image.shape[:2] and mask.any()
    assert _outside_unchanged(image, edited, mask, 6)  # apply_edits' default dilation
    assert (edited[mask] != image[mask]).any(axis=-1).mean() > 0.5
    assert 0.05 < mask.mean() < 0.6
    assert (out / row["outputs"]["write_overlays"]).exists()


def test_real_mobile_sam_remove_and_recolor_from_words(mobile_sam_checkpoint, tmp_path, capsys):
    original = load_image(COFFEE)
    out = tmp_path / "coffee_edited.png"
    code = main(["edit", str(COFFEE), "--say", "Could you remove the spoon, and then make the table green?",
                 "--point", f"{SPOON[0]},{SPOON[1]}", "--point", f"{TABLE[0]},{TABLE[1]}", "--sam", str(mobile_sam_checkpoint),
                 "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "remove 'spoon'; recolor 'table' -> 'green'" in printed
    edited = _png(out)
    spoon, table = _png(tmp_path / "coffee_edited_mask0.png") > 0, _png(tmp_path / "coffee_edited_mask1.png") > 0
    assert spoon[SPOON[1], SPOON[0]] and table[TABLE[1], TABLE[0]]
    assert 2000 < spoon.sum() < 20000 and table.sum() > 50000 and not (spoon & table).any()
    # nothing outside the two (dilated) masks changed; inside, both did
    assert _outside_unchanged(original, edited, spoon | table, 6)
    only_spoon = spoon & ~dilate(table, 6)
    assert (edited[only_spoon] != original[only_spoon]).any(axis=-1).mean() > 0.9
    # removed: where the silver spoon was, the colour is now that of the red saucer around it
    ring = dilate(spoon, 14) & ~dilate(spoon, 6) & ~table
    around = original[ring].astype(float).mean(axis=0)
    before, after = original[only_spoon].astype(float).mean(axis=0), edited[only_spoon].astype(float).mean(axis=0)
    assert np.linalg.norm(after - around) < 0.5 * np.linalg.norm(before - around)
    # recoloured: the brown table is green, its wood grain (lightness pattern) kept
    target_hue = srgb_to_oklch(np.array(color_rgb("green"), float).reshape(1, 3) / 255)[0, 2]
    lch_before, lch_after = srgb_to_oklch(original[table] / 255.0), srgb_to_oklch(edited[table] / 255.0)
    colourful = lch_after[:, 1] > 0.05
    assert colourful.mean() > 0.7
    assert np.median(hue_distance(lch_after[colourful, 2], target_hue)) < 0.2
    assert np.corrcoef(lch_before[:, 0], lch_after[:, 0])[0, 1] > 0.9


def test_spoken_recolor_with_real_mobile_sam_and_a_point_manifest(mobile_sam_checkpoint, say, tmp_path):
    """pipelines/voice_edit_points.yaml: espeak -> real tiny.en -> 'make the cup blue' -> MobileSAM at a point."""
    wav = say("make the cup blue")
    line = {"image": str(COFFEE), "audio_path": str(wav), "points": [list(CUP)]}
    (tmp_path / "edits.jsonl").write_text(json.dumps(line) + "\n")
    code = main(["run", str(REPO / "pipelines" / "voice_edit_points.yaml"), str(tmp_path / "edits.jsonl"), "--out",
                 str(tmp_path / "out"), "--fail-on-error", "--set", f"sam={mobile_sam_checkpoint}", "--set", "device=cpu"])
    out = tmp_path / "out"
    assert code == 0, (out / "errors.jsonl").read_text()
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    original, edited = load_image(COFFEE), _png(out / row["outputs"]["write_edited"])
    cup = _png(out / row["outputs"]["write_edited.mask0"]) > 0
    assert cup[CUP[1], CUP[0]] and _outside_unchanged(original, edited, cup, 2)
    blue = edited[cup].astype(float)
    assert (blue[:, 2] > blue[:, 0] + 20).mean() > 0.7


def test_replace_without_a_diffusion_model_says_so(mobile_sam_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="needs a diffusion model"):
        main_raising(["edit", str(COFFEE), "--say", "change the cup to a teapot", "--point", f"{CUP[0]},{CUP[1]}",
                      "--sam", str(mobile_sam_checkpoint), "--device", "cpu", "--out", str(tmp_path / "x.png")])


def test_cli_argument_errors(tmp_path, capsys):
    assert main(["edit", str(COFFEE), "--say", "remove the spoon and the cup", "--point", "1,2",
                 "--sam", "nowhere.pt", "--out", str(tmp_path / "x.png")]) == 1
    assert main(["edit", str(COFFEE), "--say", "hello there", "--point", "1,2", "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "hello there" in err and "remove | delete" in err
    assert main(["edit", str(COFFEE), "--say", "remove the cup", "--point", "1", "--out", str(tmp_path / "x.png")]) == 1
    assert "--point '1' must be 2" in capsys.readouterr().err


def main_raising(argv):
    """`grounded edit` with its errors raised instead of printed (to match on the exception)."""
    import argparse

    from grounded.commands import edit

    parser = argparse.ArgumentParser()
    edit.add_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_spoken_remove_with_a_box_target(mobile_sam_checkpoint, say, tmp_path, capsys):
    """grounded edit --audio with --box: espeak -> real tiny.en -> target_boxes -> MobileSAM -> OpenCV."""
    out = tmp_path / "no_spoon.png"
    code = main(["edit", str(COFFEE), "--audio", str(say("remove the spoon")), "--box", "322,60,412,330",
                 "--sam", str(mobile_sam_checkpoint), "--device", "cpu", "--out", str(out), "--remove-with", "opencv"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "heard: 'remove the spoon.'" in printed.lower() and "edits: remove 'spoon'" in printed
    original, edited = load_image(COFFEE), _png(out)
    mask = _png(tmp_path / "no_spoon_mask0.png") > 0
    assert mask[SPOON[1], SPOON[0]] and mask[:, :300].sum() == 0  # inside the box
    assert _outside_unchanged(original, edited, mask, 6)
    assert (edited[mask] != original[mask]).any(axis=-1).mean() > 0.9


def test_out_without_an_extension_or_as_a_folder(tmp_path, monkeypatch):
    """Issue 19: `--out NAME` wrote a PNG named NAME; now NAME.png, and a folder gets IMAGE_edited.png."""
    from grounded.commands.edit import output_path
    from grounded.sam import save_pretrained
    from grounded.testing import tiny_sam

    source = Path("photos/coffee.jpg")
    (tmp_path / "existing").mkdir()
    monkeypatch.chdir(tmp_path)
    assert output_path(None, source) == Path("out/edit/coffee_edited.png")
    assert output_path("result", source) == Path("result.png")
    assert output_path("result.v2", source) == Path("result.v2.png")
    assert output_path("shots/result.JPG", source) == Path("shots/result.JPG")
    assert output_path("new_folder/", source) == Path("new_folder/coffee_edited.png")
    assert output_path("existing", source) == Path("existing/coffee_edited.png")

    sam = save_pretrained(tiny_sam("vit"), tmp_path / "tiny_sam")
    for out, written in (("edited", "edited.png"), ("as.jpg", "as.jpg")):
        assert main(["edit", str(COFFEE), "--say", "make the cup blue", "--point", f"{CUP[0]},{CUP[1]}",
                     "--sam", str(sam), "--device", "cpu", "--out", out]) == 0
        with Image.open(tmp_path / written) as picture:
            assert picture.format == ("JPEG" if written.endswith(".jpg") else "PNG")
        assert not (tmp_path / out).is_file() or out == written


def test_a_detector_folder_that_does_not_exist_is_named(tmp_path, capsys):
    """Issue 28: `--detector path/to/grounding-dino` said the hub's repo-id format error."""
    import time

    start = time.monotonic()
    assert main(["edit", str(COFFEE), "--say", "remove the cup", "--detector", "path/to/grounding-dino",
                 "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "--detector path/to/grounding-dino: the folder path/to/grounding-dino does not exist" in err
    assert "tried as a folder" in err and "repo" not in err.lower() and time.monotonic() - start < 5

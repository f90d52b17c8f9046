"""Every demo app launched on localhost (a free port, analytics off) and driven through
gradio_client: each mode gives its output, bad uploads and missing input get clear messages.
Tiny random models, except the voice edit (the real Whisper tiny.en and MobileSAM)."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from demo_helpers import CAPTION_PREFIX, client, picture, served, temporary_folder, tiny_models

pytestmark = pytest.mark.timeout(300)
TINY_AMG = ["segment_auto.pred_iou_thresh=0", "segment_auto.stability_score_thresh=0"]



@pytest.fixture(scope="module", autouse=True)
def own_temporary_folder(tmp_path_factory):
    with temporary_folder(tmp_path_factory.mktemp("demo-tmp")):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.getbasetemp() / "demo-models")


@pytest.fixture
def files(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image\n")
    return {"picture": picture(tmp_path / "picture.png"), "bad": bad}


def test_auto_masks(models, files, tmp_path):
    from gradio_client import handle_file

    from demos.auto_masks import build_app

    with served(build_app(models["sam"], overrides=TINY_AMG)) as url:
        api = client(url, tmp_path / "downloads")
        overlay, summary, coco_path = api.predict(handle_file(str(files["picture"])), 4, api_name="/segment")
        coco = json.loads(open(coco_path).read())
        assert summary.startswith(f"{len(coco['annotations'])} masks") and coco["annotations"]
        assert Image.open(overlay).size == (160, 120)
        assert not np.array_equal(np.asarray(Image.open(overlay).convert("RGB")), np.asarray(Image.open(files["picture"])))
        with pytest.raises(Exception, match="not an image file"):
            api.predict(handle_file(str(files["bad"])), 4, api_name="/segment")
        # Two users at once: the queue serves them in turn, both get their result.
        jobs = [api.submit(handle_file(str(files["picture"])), grid, api_name="/segment") for grid in (4, 8)]
        assert [job.result(timeout=120)[1].endswith(f"(grid {g}x{g})") for job, g in zip(jobs, (4, 8))] == [True, True]


def test_text_to_mask_every_mode(models, files, tmp_path):
    from gradio_client import handle_file

    from demos.text_to_mask import build_app

    from grounded.sam.text_prompt import TextPromptProjection

    projection = TextPromptProjection(clip_dim=32, prompt_embed_dim=32).save_pretrained(tmp_path / "projection")
    app = build_app(models["sam"], models["detector"], models["clip"],
                    clip_overrides=["points_per_side=4", *TINY_AMG], projection=str(projection), sam3=models["sam3"],
                    sam3_overrides=["threshold=0.24"])
    brush = np.zeros((120, 160, 4), np.uint8)
    brush[40:70, 30:90] = (255, 255, 255, 255)  # a stroke whose bounding box is x 30-90, y 40-70
    Image.fromarray(brush).save(tmp_path / "stroke.png")
    no_brush = {"background": None, "layers": [], "composite": None}
    stroke = {"background": handle_file(str(files["picture"])), "layers": [handle_file(str(tmp_path / "stroke.png"))],
              "composite": None}
    image = handle_file(str(files["picture"]))
    with served(app) as url:
        api = client(url, tmp_path / "downloads")
        results = {}
        for mode, text, clicks, editor in [
            ("text (Grounding DINO + SAM)", "dog. cat.", [], no_brush),
            ("text (Grounding DINO + SAM)", "dog.", [[50, 60, 1], [120, 50, 0]], no_brush),  # clicks refine the text
            ("text (CLIP ranks SAM's masks)", "a red circle", [], no_brush),
            ("text (native: CLIP token prompts SAM)", "a red circle", [[50, 60, 1]], no_brush),
            ("text (SAM 3 concepts)", "a red circle. a blue square.", [[50, 60, 0]], no_brush),  # a click corrects
            ("clicks", "", [[50, 60, 1], [120, 50, 0]], no_brush),
            ("box (two clicks)", "", [[20, 30, 1], [80, 90, 1]], no_brush),
            ("brush (its box)", "", [], stroke),
        ]:
            output, summary = api.predict(image, mode, text, clicks, editor, api_name="/segment")
            assert Image.open(output).size == (160, 120), mode
            results[(mode, text)] = summary
        assert results[("text (Grounding DINO + SAM)", "dog. cat.")].split()[1] == "found:"
        assert results[("text (CLIP ranks SAM's masks)", "a red circle")].startswith("1 found: a red circle")
        assert results[("text (native: CLIP token prompts SAM)", "a red circle")].startswith("1 found")
        assert results[("text (SAM 3 concepts)", "a red circle. a blue square.")].split()[1] == "found:"
        for mode in ("clicks", "box (two clicks)", "brush (its box)"):
            assert results[(mode, "")].startswith("1 found"), mode
        with pytest.raises(Exception, match="Type what to segment"):
            api.predict(image, "text (Grounding DINO + SAM)", " ", [], no_brush, api_name="/segment")
        with pytest.raises(Exception, match="click two opposite corners"):
            api.predict(image, "box (two clicks)", "", [[5, 5, 1]], no_brush, api_name="/segment")
        with pytest.raises(Exception, match="paint over the object"):
            api.predict(image, "brush (its box)", "", [], no_brush, api_name="/segment")
        with pytest.raises(Exception, match="not an image file"):
            api.predict(handle_file(str(files["bad"])), "clicks", "", [[1, 1, 1]], no_brush, api_name="/segment")


def test_auto_label_gallery_and_zip(models, files, tmp_path):
    from gradio_client import handle_file

    from demos.auto_label import build_app

    second = tmp_path / "second.png"
    Image.fromarray(np.asarray(Image.open(files["picture"]))[::-1].copy()).save(second)
    app = build_app(models["sam"], models["captioner"], models["detector"],
                    overrides=[f"caption.prompt={CAPTION_PREFIX}", "tags.max_tags=3", "box_threshold=0.05",
                               "text_threshold=0.05", "detect.size=96", "detect.max_size=128"])
    with served(app) as url:
        api = client(url, tmp_path / "downloads")
        uploads = [handle_file(str(p)) for p in (files["picture"], second, files["bad"])]
        gallery, summary, archive = api.predict(uploads, "", api_name="/label")
        assert len(gallery) == 2 and all(g["caption"].endswith("[dog, beach, stick]") for g in gallery)
        assert summary.startswith("2 labelled, 1 skipped") and "notes.png" in summary and "not an image" in summary
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            coco = json.loads(z.read("coco.json"))
        assert {"yolo/data.yaml", "json/picture.json", "overlays/second.png"} <= set(names)
        assert [c["name"] for c in coco["categories"]] == ["beach", "dog", "stick"] and len(coco["images"]) == 2
        _, _, archive = api.predict(uploads[:1], "cat. dog.", api_name="/label")  # your classes
        with zipfile.ZipFile(archive) as z:
            assert [c["name"] for c in json.loads(z.read("coco.json"))["categories"]] == ["cat", "dog"]
        with pytest.raises(Exception, match="None of the uploads"):
            api.predict([handle_file(str(files["bad"]))], "", api_name="/label")


def test_voice_edit_with_a_click_removes_the_clicked_thing(models, files, tmp_path, mobile_sam_checkpoint):
    from gradio_client import handle_file

    from demos.voice_edit import build_app
    from grounded.testing.speech import espeak_missing, speak

    if espeak_missing():
        pytest.skip(espeak_missing())
    speech = speak("remove the ball", tmp_path / "say.wav")
    app = build_app(str(mobile_sam_checkpoint), models["detector"],
                    detector_overrides=["detect.size=96", "detect.max_size=128"])
    with served(app) as url:
        api = client(url, tmp_path / "downloads")
        transcript, edits, mask, edited = api.predict(handle_file(str(speech)), handle_file(str(files["picture"])),
                                                      [50, 60], api_name="/edit")
        assert "remove" in transcript.lower() and edits.startswith("remove")
        before = np.asarray(Image.open(files["picture"])).astype(int)
        after = np.asarray(Image.open(edited).convert("RGB")).astype(int)
        yy, xx = np.mgrid[:120, :160]
        disc = (yy - 60) ** 2 + (xx - 50) ** 2 < 20 ** 2
        assert (before[disc][:, 0] - before[disc][:, 2]).mean() > 150  # red before
        assert np.abs(after[disc] - 150).mean() < 40  # filled from the gray around it
        assert np.abs(after[30:80, 105:140] - before[30:80, 105:140]).mean() < 5  # the blue square untouched
        with pytest.raises(Exception, match="Record or upload"):
            api.predict(None, handle_file(str(files["picture"])), None, api_name="/edit")


def test_grounded_demo_starts_an_app(tmp_path, mobile_sam_checkpoint):
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from demo_helpers import free_port

    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run([sys.executable, "-m", "grounded", "demo", "list"], cwd=repo, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0 and all(n in listed.stdout for n in ("auto_masks", "text_to_mask", "auto_label", "voice_edit"))
    wrong = subprocess.run([sys.executable, "-m", "grounded", "demo", "auto_mask"], cwd=repo, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 1 and "no demo 'auto_mask'" in wrong.stderr

    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=str(repo), TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "grounded", "demo", "auto_masks", "--port", str(port)], cwd=repo,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, page = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None and page is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no answer in 120 s"
        assert "Automatic masks" in page and "MobileSAM (real weights)" in page  # the real model, by default
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_grounded_demo_passes_the_apps_own_options(models, tmp_path, capsys):
    """Issue 28: `grounded demo text_to_mask --projection FOLDER` (what the app asks for) reaches the
    app; `grounded demo NAME --help` shows the app's own options."""
    from grounded.cli import main

    with pytest.raises(SystemExit) as done:
        main(["demo", "text_to_mask", "--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert "grounded demo text_to_mask" in usage
    assert all(option in usage for option in ("--projection", "--clip", "--host", "--port")), usage
    missing = tmp_path / "no-projection-here"
    assert main(["demo", "text_to_mask", "--sam", models["sam"], "--clip", models["clip"],
                 "--projection", str(missing)]) == 1  # the app opened the projection named: it is not there
    assert str(missing) in capsys.readouterr().err


def test_run_folders_are_bounded_and_removed(tmp_path, monkeypatch):
    """A long-running demo keeps only its newest request folders (gradio copies outputs after the
    handler returns, so the newest must outlive it); the rest are removed."""
    from demos import _shared

    class Report:
        ok = 1

    class Pipeline:
        def run(self, inputs, out, models=None, progress=False):
            out.mkdir()
            return Report()

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    monkeypatch.setattr(_shared, "RUN_FOLDERS", [])
    outs = [_shared.run_folder(Pipeline(), [str(image)], None)[1] for _ in range(_shared.KEPT_RUN_FOLDERS + 3)]
    alive = [out.parent for out in outs if out.parent.exists()]
    assert alive == [out.parent for out in outs[-_shared.KEPT_RUN_FOLDERS:]]
    _shared.remove_run_folders()
    assert not any(out.parent.exists() for out in outs)

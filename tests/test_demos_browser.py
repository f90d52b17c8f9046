"""One flow per demo in a real browser: Debian's Chromium, headless, through playwright, with a
fresh profile. Upload, click, wait explicitly for the output image, save a screenshot (its path is
printed; the files stay in pytest's tmp folder)."""

import re

import pytest

from demo_helpers import CAPTION_PREFIX, browser, picture, screenshot, served, temporary_folder, tiny_models

pytestmark = pytest.mark.timeout(300)
TINY_AMG = ["segment_auto.pred_iou_thresh=0", "segment_auto.stability_score_thresh=0"]
WAIT_MS = 90_000



@pytest.fixture(scope="module", autouse=True)
def own_temporary_folder(tmp_path_factory):
    with temporary_folder(tmp_path_factory.mktemp("demo-tmp")):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models(tmp_path_factory.getbasetemp() / "demo-models")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    import shutil

    if shutil.which("/usr/bin/chromium") is None:
        pytest.skip("Debian's chromium is not installed (bin/system-deps installs it)")
    with browser(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


def open_page(chromium, url):
    """The demo's page once Gradio has drawn it: "networkidle" can come while the page still says
    "Loading..." on a busy machine, so wait for the run button every demo has."""
    page = chromium.new_page()
    page.goto(url, wait_until="networkidle")
    page.wait_for_selector("#run", state="visible", timeout=WAIT_MS)
    return page


def click_image(page, selector, x, y, width, height):
    """A click on the displayed image at pixel (x, y) of a width x height image."""
    img = page.locator(f"{selector} img").first
    img.wait_for(state="visible", timeout=WAIT_MS)
    box = img.bounding_box()
    img.click(position={"x": x * box["width"] / width, "y": y * box["height"] / height})


def test_auto_masks_in_the_browser(chromium, models, tmp_path, shots):
    from demos.auto_masks import build_app

    with served(build_app(models["sam"], overrides=TINY_AMG)) as url:
        page = open_page(chromium, url)
        assert "Automatic masks" in page.inner_text("body")
        page.set_input_files("#input-image input[type=file]", str(picture(tmp_path / "picture.png")))
        page.wait_for_selector("#input-image img", timeout=WAIT_MS)
        page.click("#run")
        page.wait_for_selector("#output-image img", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#summary').innerText.includes('masks')", timeout=WAIT_MS)
        # the COCO file, ready to download (its size shown; repeated empty masks of the tiny model are kept once)
        assert re.search(r"coco\s*\.json\s*[\d.]+\s*K?B", page.inner_text("#coco").replace("\xa0", " "))
        screenshot(page, shots, "auto_masks")


def test_text_to_mask_clicks_in_the_browser(chromium, models, tmp_path, shots, monkeypatch):
    import demos._shared
    import demos.text_to_mask
    from demos.text_to_mask import build_app

    # The demo's offline defaults (tiny random Grounding DINO and CLIP), taken from the test's folder.
    monkeypatch.setattr(demos._shared, "tiny_detector", lambda: models["detector"])
    monkeypatch.setattr(demos.text_to_mask, "_tiny_clip", lambda: models["clip"])
    app = build_app(models["sam"], clip_overrides=["points_per_side=4", *TINY_AMG])
    with served(app) as url:
        page = open_page(chromium, url)
        notice = page.inner_text("#models")  # the page says which models are not real
        assert "tiny random stand-ins" in notice and "Grounding DINO" in notice and "CLIP" in notice
        page.set_input_files("#input-image input[type=file]", str(picture(tmp_path / "picture.png")))
        click_image(page, "#input-image", 50, 60, 160, 120)
        page.wait_for_function("document.querySelector('#clicks').innerText.includes('+')", timeout=WAIT_MS)
        page.get_by_label("clicks", exact=True).check()
        page.click("#run")
        page.wait_for_selector("#output-image img", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#summary').innerText.includes('found')", timeout=WAIT_MS)
        assert page.inner_text("#summary").startswith("1 found")
        screenshot(page, shots, "text_to_mask")


def test_auto_label_in_the_browser(chromium, models, tmp_path, shots):
    from demos.auto_label import build_app

    app = build_app(models["sam"], models["captioner"], models["detector"],
                    overrides=[f"caption.prompt={CAPTION_PREFIX}", "tags.max_tags=3", "box_threshold=0.05",
                               "text_threshold=0.05", "detect.size=96", "detect.max_size=128"])
    (tmp_path / "b").mkdir()
    with served(app) as url:
        page = open_page(chromium, url)
        page.set_input_files("#input-files input[type=file]",
                             [str(picture(tmp_path / "picture.png")), str(picture(tmp_path / "b" / "other.png", 120, 90))])
        page.wait_for_function("document.querySelector('#input-files').innerText.includes('other')", timeout=WAIT_MS)
        page.click("#run")
        page.wait_for_selector("#gallery img", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#summary').innerText.includes('2 labelled')", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#zip').innerText.includes('KB')", timeout=WAIT_MS)  # the zip
        screenshot(page, shots, "auto_label")


def test_voice_edit_in_the_browser(chromium, models, tmp_path, shots, mobile_sam_checkpoint):
    from demos.voice_edit import build_app
    from grounded.testing.speech import espeak_missing, speak

    if espeak_missing():
        pytest.skip(espeak_missing())
    speech = speak("remove the ball", tmp_path / "say.wav")
    app = build_app(str(mobile_sam_checkpoint), models["detector"], detector_overrides=["detect.size=96", "detect.max_size=128"])
    with served(app) as url:
        page = open_page(chromium, url)
        page.set_input_files("#audio input[type=file]", str(speech))
        page.set_input_files("#input-image input[type=file]", str(picture(tmp_path / "picture.png")))
        click_image(page, "#input-image", 50, 60, 160, 120)
        page.wait_for_function("document.querySelector('#target').innerText.includes('(')", timeout=WAIT_MS)
        page.wait_for_selector("#audio audio, #audio .waveform-container, #audio [data-testid='waveform-x']",
                               state="attached", timeout=WAIT_MS)
        page.click("#run")
        page.wait_for_selector("#output-image img", timeout=WAIT_MS)
        page.wait_for_function("document.querySelector('#transcript textarea').value.toLowerCase().includes('remove')",
                               timeout=WAIT_MS)
        screenshot(page, shots, "voice_edit")

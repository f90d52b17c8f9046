"""The simulated annotator driving the real annotation page (headless Chromium, real MobileSAM) through
one image per stage of the data engine: manual (clicks on the page until IoU 0.9), semi (the page
lists the pre-filled masks apart; accept, correct and delete are its buttons), auto (the page shows
the automatic masks for review). The page's click log and saves are what the rounds record."""

import json
import threading
from contextlib import contextmanager

import numpy as np
import pytest

import test_demos_browser
from grounded.annotate import make_server

pytestmark = pytest.mark.timeout(600)
headless_chromium = test_demos_browser.chromium  # the demos' module fixture, under this name


@contextmanager
def page_on(session, browser):
    server = make_server(session)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = browser.new_page()
    try:
        page.goto(f"http://localhost:{server.server_address[1]}/?threads=2", wait_until="networkidle")
        page.wait_for_function("window.grounded.ready || window.grounded.error", timeout=120_000)
        assert page.evaluate("window.grounded.error") is None
        yield page
    finally:
        page.close()
        server.shutdown()
        server.server_close()


def test_the_simulated_annotator_on_the_page_through_every_stage(mobile_sam_checkpoint, stardist_nuclei, headless_chromium,
                                                                tmp_path):
    from grounded.annotate.server import STATIC_DIR
    from grounded.engine import Project, init_project, run_round, start_round
    from grounded.engine import browser, stages
    from grounded.eval.masks import decode, mask_iou
    from grounded.rle import compress_rle, decode_rle, encode_rle, rle_to_bbox
    from grounded.testing.engine_data import SHORT, write_quadrants

    if not (STATIC_DIR / "index.html").exists():
        pytest.fail("the annotation page is not built: run bin/build-web")
    image, labels = stardist_nuclei
    data = write_quadrants(image, labels, tmp_path / "data", SHORT["per_quadrant"], SHORT["crop"])
    truth = json.loads((data / "truth.json").read_text())
    truths = {im["file_name"]: decode([a["segmentation"] for a in truth["annotations"] if a["image_id"] == im["id"]])
              for im in truth["images"]}
    grid = {"points_per_side": SHORT["points_per_side"]}
    init_project(data / "images", tmp_path / "proj", coco=str(data / "heldout.json"), heldout=["q4.png"],
                 model=str(mobile_sam_checkpoint), stage_settings={"semi": grid, "auto": grid})

    # manual: q1.png, every nucleus clicked on the page
    with Project.open(tmp_path / "proj") as project:
        entry = start_round(project, "manual", take=1, finetune=False)
        session = stages.page_session(project, entry, stages.load_model(entry["model"]))
        assert session.info()["stage"] == "manual"
        with page_on(session, headless_chromium) as page:
            assert page.inner_text("#stage-name") == "manual stage"
            clicks = browser.annotate_manual(page, truths["q1.png"], session.image_size)
        run_round(project, entry, finish=True, log=lambda *_: None)
        assert entry["status"] == "done" and entry["masks"] == 4
    log = [json.loads(t) for t in (project.round_dir(entry) / "labels" / "log.jsonl").read_text().splitlines()]
    assert [line["num_clicks"] for line in log] == clicks and all(1 <= c <= 20 for c in clicks)
    assert all(line["seconds"] > 0 and len(line["clicks"]) == line["num_clicks"] for line in log)  # the page's own log
    saved = json.loads(project.dataset_path(1).read_text())["annotations"]
    ious = [max(mask_iou(decode_rle(a["segmentation"])[None], t[None])[0] for a in saved) for t in truths["q1.png"]]
    assert all(iou >= 0.9 for iou, c in zip(ious, clicks) if c < 20), ious

    # semi: q2.png with three pre-filled masks (one right, one off, one stray), then the missing ones
    with Project.open(tmp_path / "proj") as project:
        entry = start_round(project, "semi", take=1, finetune=False)
        t = truths["q2.png"]
        stray = np.zeros_like(t[0])
        stray[:6, :6] = True
        proposals = [t[0], np.roll(t[1], 2, axis=1), stray]
        prefill = [{"id": 100 + i, "image_id": project.state["image_ids"]["q2.png"], "label": "object", "iscrowd": 0,
                    "segmentation": compress_rle(encode_rle(m)), "area": int(m.sum()), "bbox": rle_to_bbox(encode_rle(m)),
                    "score": 0.95, "prefill": True} for i, m in enumerate(proposals)]
        project.round_dir(entry).mkdir(parents=True)
        (project.round_dir(entry) / "prefill.json").write_text(json.dumps({"q2.png": prefill}))
        session = stages.page_session(project, entry, stages.load_model(entry["model"]))
        with page_on(session, headless_chromium) as page:
            assert page.locator("#prefilled li").count() == 3 and page.locator("#masks li").count() == 0
            assert page.is_visible("#prefilled-box")
            counts = browser.annotate_semi(page, t, session.image_size)
            assert page.locator("#prefilled li").count() == 0 and page.locator("#masks li").count() == 4
        assert counts == {"accept": 1, "correct": 1, "delete": 1, "add": 2}
        run_round(project, entry, finish=True, log=lambda *_: None)
        assert entry["masks"] == 4 and entry["unreviewed_prefill"] == 0
    log = [json.loads(x) for x in (project.round_dir(entry) / "labels" / "log.jsonl").read_text().splitlines()]
    assert [line["annotation_id"] for line in log if line.get("confirmed")] == [100]
    (corrected,) = [line for line in log if line["corrects"] is not None]
    assert corrected["corrects"] == 101 and corrected["box"] is not None
    assert len(json.loads(project.dataset_path(2).read_text())["annotations"]) == 8

    # auto: q3.png labelled with no person; the page shows its masks for review
    with Project.open(tmp_path / "proj") as project:
        entry = start_round(project, "auto", take=1)
        run_round(project, entry, log=lambda *_: None)
        session = stages.page_session(project, entry, stages.load_model(entry["model"]))
        with page_on(session, headless_chromium) as page:
            page.wait_for_function(f"document.querySelectorAll('#masks li').length === {entry['masks']}", timeout=60_000)
            assert page.inner_text("#progress").endswith(f"{entry['masks']} masks")

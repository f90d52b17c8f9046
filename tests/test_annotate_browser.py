"""The annotation page in headless Chromium (playwright), on real MobileSAM weights and a sample photo:
the decoder run by onnxruntime-web in the page equals grounded's Python predictor (standard and split
graphs, every prompt kind), and an annotation session driven end to end, through a server restart and a
reloaded tab."""

import json
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import test_demos_browser
from grounded.annotate import collect_images, make_server
from grounded.annotate.server import STATIC_DIR, Session, postprocess_low_res
from grounded.annotate.store import AnnotationStore

pytestmark = pytest.mark.timeout(600)
headless_chromium = test_demos_browser.chromium  # the demos' module fixture, under this name
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
WAIT_MS = 120_000
PROMPTS = {
    "point": dict(points=[[200.0, 150.0, 1]]),
    "points_with_background": dict(points=[[200.0, 150.0, 1], [300.0, 80.0, 0], [120.0, 200.0, 1]]),
    "box": dict(box=[100.0, 40.0, 350.0, 280.0]),
    "box_and_point": dict(box=[100.0, 40.0, 350.0, 280.0], points=[[330.0, 60.0, 0]]),
    "mask_input": dict(points=[[200.0, 150.0, 1]], mask=True),
}


@pytest.fixture(scope="module")
def model(mobile_sam_checkpoint, tmp_path_factory):
    from grounded.export import export_onnx
    from grounded.sam import SamPredictor, from_pretrained

    if not (STATIC_DIR / "index.html").exists():
        pytest.fail("the annotation page is not built: run bin/build-web")
    sam = from_pretrained(mobile_sam_checkpoint, image_encoder_backend="torch")
    folder = export_onnx(sam, tmp_path_factory.mktemp("page-graphs"), encoder=False)
    predictor = SamPredictor(sam, cache_size=4)

    def embed(image):
        predictor.set_image(image)
        return predictor.get_image_embedding().numpy()

    return sam, folder, predictor, embed


@contextmanager
def serving(model, images, out, port=0):
    sam, folder, _, embed = model
    records, initial = collect_images([str(images)])
    session = Session(records, AnnotationStore(out, records, initial), folder, embed, sam.image_encoder.img_size,
                      ["cat", "dog"])
    server = make_server(session, port=port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield session, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def open_page(context, port, graph="split"):
    page = context.new_page()
    page.goto(f"http://localhost:{port}/?threads=2", wait_until="networkidle")
    page.select_option("#graph", graph)
    page.wait_for_function("window.grounded.ready || window.grounded.error", timeout=WAIT_MS)
    assert page.evaluate("window.grounded.error") is None
    assert page.evaluate("self.crossOriginIsolated")  # threads need it
    return page


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def python_outputs(predictor, prompt, mask):
    """The predictor's four outputs (single mask, then the multimask ones): masks and scores."""
    args = {}
    if "points" in prompt:
        args.update(point_coords=np.array([p[:2] for p in prompt["points"]]), point_labels=np.array([p[2] for p in prompt["points"]]))
    if "box" in prompt:
        args["box"] = np.array(prompt["box"])
    if prompt.get("mask"):
        args["mask_input"] = mask
    one = predictor.predict(**args, multimask_output=False)
    many = predictor.predict(**args, multimask_output=True)
    return np.concatenate([one[0], many[0]]), np.concatenate([one[1], many[1]])


def page_prompt(prompt, mask):
    points = [{"x": x, "y": y, "label": label} for x, y, label in prompt.get("points", [])]
    return {"points": points, "box": prompt.get("box"), "mask": mask.ravel().tolist() if prompt.get("mask") else None}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    shutil.copy(SAMPLES / "chelsea.jpg", folder / "a_chelsea.jpg")
    shutil.copy(SAMPLES / "coffee.jpg", folder / "b_coffee.jpg")
    (folder / "c_broken.png").write_bytes(b"\x89PNG broken")
    return folder


# The split graph is the page's default; the standard one runs with -m slow (the CI budget).
@pytest.mark.parametrize("graph", [pytest.param("standard", marks=pytest.mark.slow), "split"])
def test_in_page_decoder_equals_the_python_predictor(model, headless_chromium, photo_folder, tmp_path, graph):
    from grounded.io.image import load_image

    sam, _, predictor, _ = model
    image = load_image(photo_folder / "a_chelsea.jpg")
    predictor.set_image(image)
    mask = predictor.predict(point_coords=np.array([[200.0, 150.0]]), point_labels=np.array([1]))[2][:1]
    with serving(model, photo_folder, tmp_path / "out") as (_, port):
        page = open_page(headless_chromium, port, graph)
        for name, prompt in PROMPTS.items():
            result = page.evaluate("([p, g]) => window.grounded.decode(p, g)", [page_prompt(prompt, mask), graph])
            logits = np.array(result["logits"], np.float32).reshape(4, 256, 256)
            ref_masks, ref_scores = python_outputs(predictor, prompt, mask)
            np.testing.assert_allclose(result["iou"], ref_scores, atol=1e-3, err_msg=name)
            for i in range(4):
                got = postprocess_low_res(logits[i], sam.image_encoder.img_size, image.shape[:2])
                assert iou(got, ref_masks[i]) >= 0.99, (name, i, iou(got, ref_masks[i]))
        if graph == "split":  # the int8 graph against fp32: reported, loosely bounded
            ious = []
            for name, prompt in PROMPTS.items():
                if prompt.get("mask"):
                    continue
                fp32 = page.evaluate("([p]) => window.grounded.decode(p, 'split')", [page_prompt(prompt, mask)])
                int8 = page.evaluate("([p]) => window.grounded.decode(p, 'int8')", [page_prompt(prompt, mask)])
                a = np.array(fp32["logits"]).reshape(4, 256, 256) > 0
                b = np.array(int8["logits"]).reshape(4, 256, 256) > 0
                ious += [iou(a[i], b[i]) for i in range(4)]
            print(f"\nint8 split graph: mean IoU against fp32 {np.mean(ious):.4f} (min {np.min(ious):.4f})")
            assert np.mean(ious) > 0.8
        page.close()


def click_image(page, x, y, background=False):
    box = page.locator("#overlay").bounding_box()
    scale = page.evaluate("window.grounded.state.scale")
    if background:
        page.keyboard.down("Shift")
    page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)
    if background:
        page.keyboard.up("Shift")


def wait_result(page):
    page.wait_for_function("window.grounded.state.result !== null", timeout=WAIT_MS)


def accept(page, label):
    """Accepts the shown mask and waits until the mask list holds it (the page says 'saved' before it
    reloads the list)."""
    page.fill("#label", label)
    page.click("#accept")
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('saved')", timeout=WAIT_MS)
    saved_id = page.inner_text("#status").split()[2]
    page.wait_for_selector(f'#masks li[data-id="{saved_id}"]', timeout=WAIT_MS)


def check_saved_masks(out, photo_folder, predictor, labels):
    """The COCO file in `out` loads in pycocotools, holds masks with exactly `labels`, each equal to the
    Python predictor's for the clicks and box its log line records."""
    from pycocotools.coco import COCO

    from grounded.io.image import load_image

    coco = COCO(str(out / "coco.json"))
    log = {entry["annotation_id"]: entry for entry in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    annotations = coco.loadAnns(coco.getAnnIds())
    assert sorted(names[a["category_id"]] for a in annotations) == labels
    for a in annotations:
        entry = log[a["id"]]
        image = load_image(photo_folder / Path(coco.imgs[a["image_id"]]["file_name"]).name)
        predictor.set_image(image)
        args = {"multimask_output": entry["candidate"] != 0}
        if entry["clicks"]:
            args.update(point_coords=np.array([c[:2] for c in entry["clicks"]]), point_labels=np.array([c[2] for c in entry["clicks"]]))
        if entry["box"]:
            args["box"] = np.array(entry["box"])
        masks, scores, _ = predictor.predict(**args)
        expected = masks[max(0, entry["candidate"] - 1)]
        assert iou(coco.annToMask(a).astype(bool), expected) >= 0.99, entry
        assert entry["seconds"] > 0 and entry["num_clicks"] >= 1


def test_an_annotation_session_end_to_end(model, headless_chromium, photo_folder, tmp_path):
    out = tmp_path / "out"
    with serving(model, photo_folder, out) as (_, port):
        page = open_page(headless_chromium, port, "split")
        assert page.inner_text("#progress").startswith("1 / 3")
        # hover: 50 pointer moves in one burst start one decoder run and leave one waiting
        runs = page.evaluate("""() => { const o = document.querySelector('#overlay'), r = o.getBoundingClientRect();
            const before = window.grounded.decoderRuns;
            for (let i = 0; i < 50; i++) o.dispatchEvent(new PointerEvent('pointermove', {clientX: r.left + 100 + i, clientY: r.top + 80, bubbles: true}));
            return before; }""")
        page.wait_for_function("window.grounded.state.result !== null", timeout=WAIT_MS)
        page.wait_for_timeout(1500)
        assert page.evaluate("window.grounded.decoderRuns") - runs == 2
        click_image(page, 200, 150)
        wait_result(page)
        best = page.inner_text("#candidate")
        assert "/3 (IoU" in best  # one click: the three multimask candidates with their scores
        page.keyboard.press("c")
        assert page.inner_text("#candidate") != best
        page.keyboard.press("c")
        page.keyboard.press("c")  # around, back to the best
        assert page.inner_text("#candidate") == best
        click_image(page, 100, 250, background=True)
        page.wait_for_function("window.grounded.state.points.length === 2")
        page.keyboard.press("z")  # undo that point
        page.wait_for_function("window.grounded.state.points.length === 1")
        click_image(page, 300, 60, background=True)  # a background point
        page.wait_for_function("window.grounded.state.points.length === 2 && window.grounded.decoderRuns > 0")
        page.wait_for_timeout(500)
        accept(page, "cat")
        # a box by drag, then relabelled, and a third mask deleted
        overlay = page.locator("#overlay").bounding_box()
        scale = page.evaluate("window.grounded.state.scale")
        page.mouse.move(overlay["x"] + 20 * scale, overlay["y"] + 20 * scale)
        page.mouse.down()
        page.mouse.move(overlay["x"] + 150 * scale, overlay["y"] + 120 * scale, steps=5)
        page.mouse.up()
        page.wait_for_function("window.grounded.state.box !== null")
        wait_result(page)
        accept(page, "dog")
        page.fill("#label", "cushion")
        page.locator("#masks li").nth(1).locator(".relabel").click()
        page.wait_for_function("document.querySelector('#masks').innerText.includes('cushion')", timeout=WAIT_MS)
        click_image(page, 400, 250)
        wait_result(page)
        page.fill("#label", "tmp")
        page.locator("#overlay").focus()
        page.keyboard.press("Enter")  # accept by key
        page.wait_for_function("document.querySelectorAll('#masks li').length === 3", timeout=WAIT_MS)
        page.locator("#masks li").nth(2).locator(".label").click()  # select it, delete by key
        page.keyboard.press("d")
        page.wait_for_function("document.querySelectorAll('#masks li').length === 2", timeout=WAIT_MS)
        page.keyboard.press("n")
        page.wait_for_function("window.grounded.ready && window.grounded.state.index === 1", timeout=WAIT_MS)
        assert page.inner_text("#progress").startswith("2 / 3")
        port_before = port
    # the server is gone mid-session; a new one on the same port, the same tab goes on
    with serving(model, photo_folder, out, port=port_before):
        click_image(page, 250, 100)
        wait_result(page)
        accept(page, "mug")
        page.reload(wait_until="networkidle")  # a reloaded tab: every accepted mask comes back
        page.wait_for_function("window.grounded.ready && window.grounded.state.index === 0", timeout=WAIT_MS)
        assert sorted(page.locator("#masks li .label").all_inner_texts()) == ["cat", "cushion"]
        page.keyboard.press("n")
        page.wait_for_function("window.grounded.ready && window.grounded.state.index === 1", timeout=WAIT_MS)
        assert page.locator("#masks li .label").all_inner_texts() == ["mug"]
        page.keyboard.press("n")  # the broken image: a clear message, the session goes on
        page.wait_for_function("document.querySelector('#status').className === 'error'", timeout=WAIT_MS)
        assert "cannot open" in page.inner_text("#status")
        page.keyboard.press("p")
        page.wait_for_function("window.grounded.ready && window.grounded.state.index === 1", timeout=WAIT_MS)
        assert page.locator("#masks li").count() == 1
        page.close()

    check_saved_masks(out, photo_folder, model[2], ["cat", "cushion", "mug"])


def test_two_tabs_conflict_visibly_and_a_coco_mask_is_corrected(model, headless_chromium, photo_folder, tmp_path):
    out = tmp_path / "out"
    with serving(model, photo_folder, out) as (_, port):
        first, second = open_page(headless_chromium, port), open_page(headless_chromium, port)
        click_image(first, 200, 150)
        wait_result(first)
        accept(first, "cat")
        click_image(second, 120, 200)
        wait_result(second)
        second.click("#accept")  # this tab has not seen the first one's mask: refused, and said
        second.wait_for_function("document.querySelector('#status').className === 'conflict'", timeout=WAIT_MS)
        assert "changed elsewhere" in second.inner_text("#status")
        # the other tab's mask is shown now (the page reloads the image's masks after saying so)
        second.wait_for_function("document.querySelectorAll('#masks li').length === 1", timeout=WAIT_MS)
        first.close()
        second.close()
    coco_file = photo_folder / "labels.json"
    coco = json.loads((out / "coco.json").read_text())
    for image in coco["images"]:
        image["file_name"] = Path(image["file_name"]).name
    coco_file.write_text(json.dumps(coco))
    try:
        records, initial = collect_images([str(coco_file)])
        sam, folder, _, embed = model
        session = Session(records, AnnotationStore(tmp_path / "fixed", records, initial), folder, embed,
                          sam.image_encoder.img_size)
        server = make_server(session)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            page = open_page(headless_chromium, server.server_address[1])
            assert page.locator("#masks li").count() == 1
            old_id = int(page.locator("#masks li").first.get_attribute("data-id"))
            page.locator("#masks li .correct").first.click()  # its box re-prompts SAM
            wait_result(page)
            click_image(page, 330, 60, background=True)
            page.wait_for_function("window.grounded.state.points.length === 1")
            page.wait_for_timeout(500)
            accept(page, "cat")
            ids = [int(x) for x in page.locator("#masks li").evaluate_all("items => items.map(i => i.dataset.id)")]
            assert len(ids) == 1 and ids[0] != old_id
            page.close()
        finally:
            server.shutdown()
            server.server_close()
    finally:
        coco_file.unlink()
    (entry,) = [json.loads(line) for line in (tmp_path / "fixed" / "log.jsonl").read_text().splitlines()]
    assert entry["corrects"] == old_id and entry["box"] is not None and len(entry["clicks"]) == 1


@pytest.mark.slow
def test_mobile_sam_encoding_in_the_page(model, headless_chromium, photo_folder, tmp_path):
    """--embed-in-page: MobileSAM's encoder run by onnxruntime-web; the page resizes with the canvas
    (not PIL), so its mask for a click is close to, not equal to, the predictor's."""
    from grounded.export import export_onnx
    from grounded.io.image import load_image

    sam, _, predictor, _ = model
    folder = export_onnx(sam, tmp_path / "graphs", encoder=True)
    records, initial = collect_images([str(photo_folder)])
    session = Session(records, AnnotationStore(tmp_path / "out", records, initial), folder, None,
                      sam.image_encoder.img_size, embed_in_page=True)
    server = make_server(session)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = open_page(headless_chromium, server.server_address[1])
        print(f"\nMobileSAM encoder in the page: {page.evaluate('window.grounded.encoderMs'):.0f} ms")
        result = page.evaluate("([p]) => window.grounded.decode(p, 'split')", [page_prompt(PROMPTS["box"], None)])
        page.close()
    finally:
        server.shutdown()
        server.server_close()
    image = load_image(photo_folder / "a_chelsea.jpg")
    predictor.set_image(image)
    expected = predictor.predict(box=np.array(PROMPTS["box"]["box"]), multimask_output=False)[0][0]
    got = postprocess_low_res(np.array(result["logits"], np.float32).reshape(4, 256, 256)[0], 1024, image.shape[:2])
    assert iou(got, expected) > 0.9, iou(got, expected)

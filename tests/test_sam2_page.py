"""SAM 2.1 on the annotation page: `export_onnx` of a SAM 2 model (the standard graph, fed the image
embedding and the two high-res maps, and its int8 copy) run by onnxruntime against `SAM2ImagePredictor`
on the same tiny random weights, for every prompt kind the page makes; the manifest, the CLI, the
server's embedding blob; and the page itself in headless Chromium: a click gives the predictor's mask
and accepting saves it."""

import json
import threading

import numpy as np
import pytest
import torch

import test_demos_browser
from test_annotate_export import PROMPTS  # every prompt kind the page makes
from grounded.annotate import collect_images, make_server, open_session, sam_embedder
from grounded.annotate.server import STATIC_DIR, Session, postprocess_low_res
from grounded.annotate.store import AnnotationStore
from grounded.export import export_onnx
from grounded.sam2 import SAM2ImagePredictor, Sam2Config, build_sam2, save_pretrained
from sam2_reference import TINY_HIERA

ort = pytest.importorskip("onnxruntime")

headless_chromium = test_demos_browser.chromium  # the demos' module fixture, under this name
WAIT_MS = 60_000
SIZE = 512  # the tiny Hiera at half the official input: low-res logits 128 x 128


def tiny_sam2(**settings):
    torch.manual_seed(0)
    return build_sam2(Sam2Config(**TINY_HIERA, image_size=SIZE, **settings))


def page_prompt(prompt: dict) -> tuple:
    """The page's SAM 2 encoding (web/annotate/src/sam.js): the box's corners (labels 2, 3) first,
    then the clicks, then the padding point."""
    coords, labels = [], []
    if "box" in prompt:
        x0, y0, x1, y1 = prompt["box"]
        coords += [[x0, y0], [x1, y1]]
        labels += [2, 3]
    coords += [list(p) for p in prompt.get("point_coords", [])] + [[0.0, 0.0]]
    labels += list(prompt.get("point_labels", [])) + [-1]
    return np.array([coords], np.float32), np.array([labels], np.float32)


def predictor_outputs(predictor, prompt, mask):
    """The predictor's four outputs (multimask_output False, then True): masks, scores, low-res logits."""
    args = {k: np.array(v) for k, v in prompt.items() if k != "mask"}
    if prompt.get("mask"):
        args["mask_input"] = mask
    one = predictor.predict(**args, multimask_output=False)
    many = predictor.predict(**args, multimask_output=True)
    return tuple(np.concatenate([a, b]) for a, b in zip(one, many))


SESSIONS = {}


def run_graph(folder, predictor, prompt, mask, name="decoder"):
    coords, labels = page_prompt(prompt)
    path = str(folder / f"{name}.onnx")
    session = SESSIONS.get(path) or SESSIONS.setdefault(path, ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
    feeds = {"image_embeddings": predictor.get_image_embedding().numpy(),
             "high_res_feats_0": predictor.high_res_features[0].numpy(),
             "high_res_feats_1": predictor.high_res_features[1].numpy(),
             "point_coords": coords, "point_labels": labels, "mask_input": mask[None].astype(np.float32),
             "has_mask_input": np.array([1.0 if prompt.get("mask") else 0.0], np.float32),
             "image_size": np.array(predictor.original_size, np.float32)}
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_sam2()
    folder = export_onnx(model, tmp_path_factory.mktemp("sam2-page-onnx"))
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(np.random.default_rng(1).integers(0, 255, (100, 128, 3), dtype=np.uint8))
    mask = np.random.default_rng(2).normal(size=(1, *model.prompt_encoder.mask_input_size)).astype(np.float32)
    return model, folder, predictor, mask


def check_graph_against_predictor(folder, predictor, prompt, mask):
    logits, scores, object_score = run_graph(folder, predictor, prompt, mask)
    ref_masks, ref_scores, ref_low_res = predictor_outputs(predictor, prompt, mask)
    assert logits.shape == (1, *ref_low_res.shape) and scores.shape == (1, 4) and object_score.shape == (1, 1)
    # the predictor returns its low-res logits clamped to [-32, 32], its masks from the unclamped ones
    np.testing.assert_allclose(np.clip(logits[0], -32, 32), ref_low_res, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores[0], ref_scores, rtol=1e-4, atol=1e-5)
    for i in range(4):
        got = postprocess_low_res(logits[0, i], SIZE, predictor.original_size, "sam2")
        assert (got != ref_masks[i]).mean() < 1e-3, (i, (got != ref_masks[i]).mean())
    return logits[0]


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_graph_equals_the_predictor(exported, kind):
    """Output 0 is `predict(multimask_output=False)`'s (the stability fallback included), 1-3 the
    multimask outputs, on a 100 x 128 image."""
    model, folder, predictor, mask = exported
    logits = check_graph_against_predictor(folder, predictor, PROMPTS[kind], mask)
    if kind == "point":  # random weights: the single-mask output is unstable, so output 0 is a fallback
        assert any(np.array_equal(logits[0], logits[i]) for i in (1, 2, 3))


def test_graph_follows_the_model_s_stability_setting_and_a_tall_image(exported, tmp_path):
    """With the fallback off, output 0 is the single-mask output itself; and a tall image (90 x 60)
    maps the prompts to SAM 2's stretched square as the predictor does."""
    model, folder, predictor, mask = exported
    plain = tiny_sam2(dynamic_multimask_via_stability=False)
    plain.load_state_dict(model.state_dict())
    plain_folder = export_onnx(plain, folder.parent)
    assert plain_folder != folder  # same weights, another decoder setting: another folder
    plain_predictor = SAM2ImagePredictor(plain)
    plain_predictor.set_image(np.random.default_rng(1).integers(0, 255, (100, 128, 3), dtype=np.uint8))
    plain_logits = check_graph_against_predictor(plain_folder, plain_predictor, PROMPTS["point"], mask)
    fallback_logits = run_graph(folder, predictor, PROMPTS["point"], mask)[0][0]
    assert not np.allclose(plain_logits[0], fallback_logits[0])
    np.testing.assert_array_equal(plain_logits[1:], fallback_logits[1:])

    plain_predictor.set_image(np.random.default_rng(3).integers(0, 255, (90, 60, 3), dtype=np.uint8))
    tall = dict(box=[5.0, 10.0, 50.0, 80.0], point_coords=[[30.0, 40.0], [50.0, 20.0]], point_labels=[1, 0])
    check_graph_against_predictor(plain_folder, plain_predictor, tall, mask)


def test_int8_graph_stays_close(exported):
    model, folder, predictor, mask = exported
    prompt = PROMPTS["points_with_background"]
    logits = run_graph(folder, predictor, prompt, mask, "decoder_int8")[0][0]
    ref_low_res = predictor_outputs(predictor, prompt, mask)[2]
    agree = ((logits > 0) == (ref_low_res > 0)).mean()
    assert agree > 0.9, agree


def test_manifest_names_the_family_graphs_and_image_inputs(exported):
    model, folder, predictor, _ = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["family"] == "sam2" and manifest["graphs"] == ["standard", "int8"]
    assert manifest["files"] == ["decoder.onnx", "decoder_int8.onnx"]
    assert all((folder / name).exists() for name in manifest["files"])
    assert not (folder / "prompt.onnx").exists() and not (folder / "encoder.onnx").exists()
    shapes = [list(t.shape) for t in (predictor.get_image_embedding(), *predictor.high_res_features)]
    assert [i["name"] for i in manifest["image_inputs"]] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    assert [i["shape"] for i in manifest["image_inputs"]] == shapes
    graph = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in graph.get_inputs()][:3] == [i["name"] for i in manifest["image_inputs"]]
    assert [o.name for o in graph.get_outputs()] == manifest["outputs"]
    assert manifest["image_size"] == SIZE and manifest["mask_input_size"] == [SIZE // 4] * 2
    assert export_onnx(model, folder.parent) == folder  # cached per weights
    with pytest.raises(ValueError, match="in-page encoding is for SAM 1 models"):
        export_onnx(model, folder.parent, encoder=True)


def test_export_under_inference_mode(exported, tmp_path):
    """(the module's export runs in grad mode)"""
    model = exported[0]
    with torch.inference_mode():
        folder = export_onnx(model, tmp_path)
    assert json.loads((folder / "manifest.json").read_text())["family"] == "sam2"


def test_export_command_with_a_sam2_folder(exported, tmp_path, capsys):
    from grounded.cli import main

    save_pretrained(exported[0], tmp_path / "model")
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "cache")]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = json.loads((tmp_path / "cache" / folder.split("/")[-1] / "manifest.json").read_text())
    assert manifest["family"] == "sam2" and "decoder.onnx" in manifest["files"]
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "cache"), "--encoder"]) == 1
    assert "in-page encoding is for SAM 1 models" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sam2_session_parts(exported, tmp_path_factory):
    """A SAM 2 folder as `grounded annotate --model FOLDER` loads it, and a folder of one image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("sam2-annotate")
    model_folder = save_pretrained(exported[0], root / "tiny_sam2")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    picture = np.zeros((120, 160, 3), np.uint8) + 30
    picture[30:90, 40:110] = 220  # a bright block on a dark ground
    picture = np.clip(picture + rng.integers(0, 20, picture.shape), 0, 255).astype(np.uint8)
    Image.fromarray(picture).save(images / "block.png")
    return model_folder, images, picture


def test_open_session_serves_the_embedding_with_the_high_res_maps(exported, sam2_session_parts, tmp_path):
    """`grounded annotate --model <SAM 2 folder>`'s session: the blob is the predictor's embedding and
    maps in the manifest's order; --embed-in-page is refused."""
    model_folder, images, picture = sam2_session_parts
    graphs = str(exported[1].parent)  # the module's export, reused for these weights
    session = open_session([str(images)], str(tmp_path / "out"), str(model_folder), cache_dir=graphs)
    assert session.model_dir == exported[1]
    assert session.family == "sam2" and session.info()["manifest"]["family"] == "sam2"
    blob = np.frombuffer(session.embedding(session.images[0]), np.float32)
    predictor = SAM2ImagePredictor(exported[0])
    predictor.set_image(picture)
    parts = [predictor.get_image_embedding(), *predictor.high_res_features]
    np.testing.assert_array_equal(blob, np.concatenate([p.numpy().ravel() for p in parts]))
    with pytest.raises(ValueError, match="is a SAM 2 model: --embed-in-page"):
        open_session([str(images)], str(tmp_path / "out2"), str(model_folder), embed_in_page=True,
                     cache_dir=graphs)
    with pytest.raises(ValueError, match="its graphs have no in-page encoder"):
        Session(session.images, session.store, session.model_dir, None, SIZE, embed_in_page=True)


def test_a_click_in_the_page_gives_the_predictor_s_mask_and_accepting_saves_it(exported, sam2_session_parts,
                                                                              tmp_path, headless_chromium):
    from pycocotools import mask as mask_utils

    if not (STATIC_DIR / "index.html").exists():
        pytest.fail("the annotation page is not built: run bin/build-web")
    model_folder, images, picture = sam2_session_parts
    embed, model = sam_embedder(str(model_folder))
    folder = export_onnx(model, exported[1].parent)
    records, initial = collect_images([str(images)])
    out = tmp_path / "out"
    session = Session(records, AnnotationStore(out, records, initial), folder, embed, SIZE, ["block"])
    server = make_server(session)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = headless_chromium.new_page()
        page.goto(f"http://localhost:{server.server_address[1]}/?threads=1", wait_until="networkidle")
        page.wait_for_function("window.grounded.ready || window.grounded.error", timeout=WAIT_MS)
        assert page.evaluate("window.grounded.error") is None
        options = page.eval_on_selector_all("#graph option", "options => options.map(o => o.value)")
        assert options == ["standard", "int8"] and page.input_value("#graph") == "standard"
        box = page.locator("#overlay").bounding_box()
        scale = page.evaluate("window.grounded.state.scale")
        x, y = 70.0, 55.0
        page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)
        page.wait_for_function("window.grounded.state.result !== null && window.grounded.state.points.length === 1",
                               timeout=WAIT_MS)
        clicked = page.evaluate("window.grounded.state.points[0]")
        candidate = page.evaluate("window.grounded.state.candidate")
        side = SIZE // 4
        logits = np.array(page.evaluate("Array.from(window.grounded.state.result.logits)"), np.float32)
        page.click("#accept")
        page.wait_for_function("document.querySelector('#status').innerText.startsWith('saved')", timeout=WAIT_MS)
        page.close()
    finally:
        server.shutdown()
        server.server_close()

    predictor = SAM2ImagePredictor(model)
    predictor.set_image(picture)
    masks, scores, low_res = predictor.predict(np.array([[clicked["x"], clicked["y"]]]), np.array([1]))
    best = int(np.argmax(scores))
    assert candidate == best + 1  # one click: the best-scored of the three multimask outputs
    np.testing.assert_allclose(np.clip(logits.reshape(4, side, side)[candidate], -32, 32), low_res[best],
                               rtol=1e-3, atol=1e-3)
    coco = json.loads((out / "coco.json").read_text())
    (annotation,) = coco["annotations"]
    saved = mask_utils.decode(annotation["segmentation"]).astype(bool)
    assert saved.shape == picture.shape[:2] and annotation["category_id"] is not None
    assert (saved != masks[best]).mean() < 1e-3, (saved != masks[best]).mean()


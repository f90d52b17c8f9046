"""The page's ONNX graphs (grounded.export) run by onnxruntime against grounded's predictor on the
same weights: the standard and the split decoder for every prompt kind, the int8 copies close, the
cache reused per weights. Tiny random models here; real MobileSAM in the slow test and in the page
(tests/test_annotate_browser.py)."""

import json

import numpy as np
import pytest
import torch

from grounded.export import export_onnx
from grounded.sam import SamPredictor
from grounded.testing import tiny_sam

ort = pytest.importorskip("onnxruntime")

PROMPTS = {
    "point": dict(point_coords=[[40.0, 30.0]], point_labels=[1]),
    "points_with_background": dict(point_coords=[[40.0, 30.0], [90.0, 70.0], [10.0, 80.0]], point_labels=[1, 0, 1]),
    "box": dict(box=[20.0, 15.0, 100.0, 80.0]),
    "box_and_point": dict(box=[20.0, 15.0, 100.0, 80.0], point_coords=[[60.0, 40.0]], point_labels=[0]),
    "mask_input": dict(point_coords=[[40.0, 30.0]], point_labels=[1], mask=True),
}


def page_prompt(prompt: dict) -> tuple:
    """The page's encoding: points then the box's two corners (labels 2, 3), or a padding point."""
    coords = [list(p) for p in prompt.get("point_coords", [])]
    labels = list(prompt.get("point_labels", []))
    if "box" in prompt:
        x0, y0, x1, y1 = prompt["box"]
        coords += [[x0, y0], [x1, y1]]
        labels += [2, 3]
    else:
        coords.append([0.0, 0.0])
        labels.append(-1)
    return np.array([coords], np.float32), np.array([labels], np.float32)


def predictor_outputs(predictor, prompt, mask):
    """All four outputs of the predictor's decoder: the single-mask one, then the multimask ones."""
    args = {k: np.array(v) for k, v in prompt.items() if k != "mask"}
    if prompt.get("mask"):
        args["mask_input"] = mask
    one = predictor.predict(**args, multimask_output=False, return_logits=True)
    many = predictor.predict(**args, multimask_output=True, return_logits=True)
    return np.concatenate([one[2], many[2]]), np.concatenate([one[1], many[1]])


def run_graphs(folder, embedding, prompt, image_size, mask, name="decoder"):
    coords, labels = page_prompt(prompt)
    has_mask = np.array([1.0 if prompt.get("mask") else 0.0], np.float32)
    mask_input = mask[None].astype(np.float32)
    size = np.array(image_size, np.float32)
    if name.startswith("decoder"):
        session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
                                  "mask_input": mask_input, "has_mask_input": has_mask, "image_size": size})
    products = ort.InferenceSession(str(folder / "image_products.onnx"), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in products.get_outputs()], products.run(None, {"image_embeddings": embedding})))
    values.update(point_coords=coords, point_labels=labels, image_size=size, mask_input=mask_input, has_mask_input=has_mask)
    if prompt.get("mask"):
        name = "prompt_mask"
    session = ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: values[i.name] for i in session.get_inputs()})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_sam("vit", seed=3)
    folder = export_onnx(model, tmp_path_factory.mktemp("page-onnx"))
    image = np.random.default_rng(1).integers(0, 255, (100, 128, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    mask = np.random.default_rng(2).normal(size=(1, *model.prompt_encoder.mask_input_size)).astype(np.float32)
    return model, folder, predictor, image, mask


@pytest.mark.parametrize("graph", ["decoder", "prompt"])
@pytest.mark.parametrize("kind", list(PROMPTS))
def test_graphs_equal_the_predictor(exported, kind, graph):
    model, folder, predictor, image, mask = exported
    embedding = predictor.get_image_embedding().numpy()
    logits, scores = run_graphs(folder, embedding, PROMPTS[kind], image.shape[:2], mask, graph)
    ref_logits, ref_scores = predictor_outputs(predictor, PROMPTS[kind], mask)
    assert logits.shape == (1, *ref_logits.shape) and scores.shape == (1, 4)
    np.testing.assert_allclose(logits[0], ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores[0], ref_scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("graph", ["decoder_int8", "prompt_int8"])
def test_int8_graphs_stay_close(exported, graph):
    model, folder, predictor, image, mask = exported
    embedding = predictor.get_image_embedding().numpy()
    logits, scores = run_graphs(folder, embedding, PROMPTS["points_with_background"], image.shape[:2], mask, graph)
    ref_logits, _ = predictor_outputs(predictor, PROMPTS["points_with_background"], mask)
    agree = ((logits[0] > 0) == (ref_logits > 0)).mean()
    assert agree > 0.9, agree


def test_export_is_cached_per_weights(exported, tmp_path):
    model, folder, *_ = exported
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["image_size"] == model.image_encoder.img_size and "encoder.onnx" not in manifest["files"]
    assert all((folder / name).exists() for name in manifest["files"])
    stamp = (folder / "decoder.onnx").stat().st_mtime_ns
    assert export_onnx(model, folder.parent) == folder and (folder / "decoder.onnx").stat().st_mtime_ns == stamp
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1)
    try:
        assert export_onnx(model, folder.parent) != folder  # other weights, another folder
    finally:
        with torch.no_grad():
            model.mask_decoder.iou_token.weight.sub_(1)
    assert not list(folder.parent.glob("*.tmp*"))


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.enable_grad])
def test_export_under_inference_mode_and_grad_mode(tmp_path, mode):
    with mode():
        folder = export_onnx(tiny_sam("vit", seed=4), tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all((folder / name).exists() for name in manifest["files"]) and manifest["products"][0] == "src"


def test_export_command(tmp_path, capsys):
    from grounded.cli import main
    from grounded.sam import save_pretrained

    save_pretrained(tiny_sam("vit", seed=6), tmp_path / "model")
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "cache")]) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = json.loads((tmp_path / "cache" / folder.split("/")[-1] / "manifest.json").read_text())
    assert "prompt.onnx" in manifest["files"] and "encoder.onnx" not in manifest["files"]

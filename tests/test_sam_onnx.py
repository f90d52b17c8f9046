"""SamOnnxModel (segment_anything.utils.onnx's interface): traced to ONNX and run by onnxruntime, its
masks and scores equal the predictor's."""

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor
from grounded.sam.utils.onnx import SamOnnxModel
from grounded.testing import tiny_sam


@pytest.mark.parametrize("return_single_mask", [True, False])
def test_onnx_decoder_matches_predictor(tmp_path, return_single_mask):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = tiny_sam("vit", seed=2)
    onnx_model = SamOnnxModel(model, return_single_mask=return_single_mask)
    emb = model.image_encoder.img_size // 16
    inputs = {
        "image_embeddings": torch.randn(1, model.prompt_encoder.embed_dim, emb, emb),
        "point_coords": torch.randint(0, 128, (1, 5, 2), dtype=torch.float),
        "point_labels": torch.randint(0, 4, (1, 5), dtype=torch.float),
        "mask_input": torch.randn(1, 1, 4 * emb, 4 * emb),
        "has_mask_input": torch.tensor([1], dtype=torch.float),
        "orig_im_size": torch.tensor([100, 128], dtype=torch.float),
    }
    path = tmp_path / "decoder.onnx"
    with torch.no_grad():
        torch.onnx.export(onnx_model, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    image = np.random.default_rng(0).integers(0, 255, (100, 128, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    point = np.array([[40.0, 30.0]])
    coords = predictor.transform.apply_coords(np.concatenate([point, [[0.0, 0.0]]]), image.shape[:2])
    feed = {
        "image_embeddings": predictor.get_image_embedding().numpy(),
        "point_coords": coords[None].astype(np.float32),
        "point_labels": np.array([[1, -1]], dtype=np.float32),
        "mask_input": np.zeros((1, 1, 4 * emb, 4 * emb), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(image.shape[:2], dtype=np.float32),
    }
    masks, scores, low_res = session.run(None, feed)
    ref_masks, ref_scores, ref_low = predictor.predict(point_coords=point, point_labels=np.array([1]),
                                                       multimask_output=True, return_logits=True)
    if return_single_mask:  # one click: the best of the three multimask outputs
        best = int(np.argmax(ref_scores))
        ref_masks, ref_scores = ref_masks[best : best + 1], ref_scores[best : best + 1]
        np.testing.assert_allclose(masks[0], ref_masks, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores[0], ref_scores, rtol=1e-4, atol=1e-5)
    else:  # all four outputs: the single-mask one first
        np.testing.assert_allclose(masks[0, 1:], ref_masks, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(scores[0, 1:], ref_scores, rtol=1e-4, atol=1e-5)

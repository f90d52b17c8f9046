"""Every SAM entry point under torch.inference_mode(), torch.no_grad() and grad mode, with the image
set in one mode and prompted in another: the same results in all nine pairs. (Before the products
cache moved into the wing, the automatic mask generator under inference_mode crashed with
"Inference tensors do not track version counter".)"""

import contextlib

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor
from grounded.testing import tiny_sam

MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": contextlib.nullcontext}


@pytest.fixture(scope="module")
def model():
    return tiny_sam("vit", seed=21)


def _image(h=90, w=120, seed=0):
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    image[h // 5 : h // 2, w // 4 : w // 2] = (200, 40, 40)
    return image


def _predictions(predictor):
    """predict (a box, then its logits fed back), predict_many, predict_torch and decode, as arrays."""
    box = np.array([10.0, 12.0, 80.0, 70.0])
    masks, scores, low = predictor.predict(box=box)
    refined = predictor.predict(box=box, mask_input=low[:1])
    many = predictor.predict_many(point_coords=np.array([[[30.0, 40.0]], [[70.0, 20.0]]]), point_labels=np.ones((2, 1)))
    coords, labels, _, _ = predictor.transform_prompts(np.array([[[50.0, 50.0]]]), np.ones((1, 1)))
    torch_out = predictor.predict_torch(coords, labels, multimask_output=False)
    decoded = predictor.decode(coords, labels, multimask_output=True)
    tensors = [*torch_out, *decoded]
    assert not any(t.requires_grad for t in tensors)
    return [masks, scores, low, *refined, *many] + [t.numpy() for t in tensors]


@pytest.fixture(scope="module")
def expected(model):
    predictor = SamPredictor(model)
    with torch.no_grad():
        predictor.set_image(_image())
        return _predictions(predictor)


@pytest.mark.parametrize("set_mode", list(MODES))
@pytest.mark.parametrize("predict_mode", list(MODES))
def test_predictor_in_every_pair_of_modes(model, expected, set_mode, predict_mode):
    predictor = SamPredictor(model)
    with MODES[set_mode]():
        predictor.set_image(_image())
    with MODES[predict_mode]():
        got = _predictions(predictor)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", list(MODES))
def test_batches_torch_images_and_sam_forward_in_every_mode(model, mode):
    images = [_image(seed=1), _image(80, 64, seed=2)]
    boxes = [np.array([[5.0, 5, 60, 50]]), np.array([[10.0, 10, 50, 60]])]
    results = {}
    for run_mode in ("no_grad", mode):
        predictor = SamPredictor(model)
        with MODES[run_mode]():
            predictor.set_images(images, batch_size=2)
            batch = predictor.predict_batch(boxes=boxes)
            resized = predictor.transform.apply_image(images[0])
            tensor = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
            predictor.set_torch_image(tensor, images[0].shape[:2])
            embedding = predictor.get_image_embedding()
            forward = model([{"image": tensor[0], "original_size": images[0].shape[:2],
                              "boxes": torch.as_tensor(predictor.transform.apply_boxes(boxes[0], images[0].shape[:2]))}],
                            multimask_output=False)[0]
        results[run_mode] = [a for r in batch for a in r] + [embedding.numpy()] + [v.numpy() for v in forward.values()]
    for a, b in zip(results[mode], results["no_grad"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("set_mode", list(MODES))
@pytest.mark.parametrize("generate_mode", list(MODES))
def test_automatic_mask_generator_in_every_pair_of_modes(model, set_mode, generate_mode):
    from grounded.sam import SamAutomaticMaskGenerator

    settings = dict(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, output_mode="uncompressed_rle")
    with torch.no_grad():
        want = SamAutomaticMaskGenerator(model, **settings).generate(_image())
    predictor = SamPredictor(model)
    with MODES[set_mode]():
        predictor.set_image(_image(seed=5))  # a shared predictor, already used in another mode
    generator = SamAutomaticMaskGenerator(model, predictor=predictor, **settings)
    with MODES[generate_mode]():
        got = generator.generate(_image())
        detections = generator.generate_detections(_image())
    assert len(got) == len(want) == len(detections) > 0
    assert [r["segmentation"]["counts"] for r in got] == [r["segmentation"]["counts"] for r in want]


@pytest.mark.parametrize("mode", list(MODES))
def test_sam_nodes_in_every_mode(tmp_path_factory, mode):
    from grounded.nodes.segment import SegmentAuto, SegmentBoxes, SegmentPoints
    from grounded.pipeline import ModelCache, Pipeline
    from grounded.sam import save_pretrained
    from grounded.types import Detections, Sample

    folder = str(save_pretrained(tiny_sam("vit", seed=21), tmp_path_factory.mktemp("tiny_sam")))
    outputs = {}
    for run_mode in ("no_grad", mode):
        nodes = [SegmentAuto(model=folder, device="cpu", points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                             node_id="auto"),
                 SegmentBoxes(model=folder, device="cpu", node_id="boxes"),
                 SegmentPoints(model=folder, device="cpu", points=[[30, 40]], node_id="points")]
        found = []
        with ModelCache() as models, MODES[run_mode]():
            for node in nodes:
                pipe = Pipeline([node], inputs={"image": np.ndarray, "detections": Detections})
                pipe.open(models)
                sample = pipe(Sample(image=_image(), detections=Detections([[10, 12, 80, 70]])))
                found.append([r["counts"] for r in sample.detections.rles])
                pipe.close()
        outputs[run_mode] = found
    assert outputs[mode] == outputs["no_grad"] and all(outputs[mode])

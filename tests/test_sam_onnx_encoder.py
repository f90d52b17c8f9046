"""The exported image encoder run by onnxruntime and by OpenVINO (`use_exported_encoder`) against the
PyTorch encoder it was exported from, on the same random weights, and through the predictor."""

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor
from grounded.sam.onnx_encoder import (OnnxImageEncoder, OpenVinoImageEncoder, use_exported_encoder,
                                       use_onnxruntime_encoder, use_openvino_encoder)
from grounded.testing import tiny_sam

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

ENCODER_CLASSES = {"onnxruntime": OnnxImageEncoder, "openvino": OpenVinoImageEncoder}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("encoder", ["vit", "tiny_vit"])
def test_embeddings_and_masks_equal_the_pytorch_encoder(encoder, backend, tmp_path):
    torch_model, ort_model = tiny_sam(encoder), tiny_sam(encoder)
    use_exported_encoder(ort_model, backend, cache_dir=tmp_path)
    assert isinstance(ort_model.image_encoder, ENCODER_CLASSES[backend])
    size = torch_model.image_encoder.img_size
    x = torch.randn(2, 3, size, size)  # a batch: run one image at a time
    with torch.no_grad():
        expected = torch_model.image_encoder(x)
        got = ort_model.image_encoder(x)
    assert got.shape == expected.shape
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4

    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    predictions = []
    for model in (torch_model, ort_model):
        predictor = SamPredictor(model)
        predictor.set_image(image)
        predictions.append(predictor.predict(point_coords=np.array([[30, 40]]), point_labels=np.array([1])))
    (m0, s0, l0), (m1, s1, l1) = predictions
    np.testing.assert_allclose(l1, l0, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(s1, s0, atol=1e-4)
    assert (m0 != m1).mean() < 1e-3


def test_export_is_cached_by_weights(tmp_path):
    model = use_onnxruntime_encoder(tiny_sam("vit", seed=1), cache_dir=tmp_path)
    files = list(tmp_path.glob("*/*.onnx"))
    assert len(files) == 1 and model.image_encoder.onnx_path == files[0]
    stamp = files[0].stat().st_mtime_ns
    again = use_onnxruntime_encoder(tiny_sam("vit", seed=1), cache_dir=tmp_path)
    assert again.image_encoder.onnx_path == files[0] and files[0].stat().st_mtime_ns == stamp
    # Other weights, another folder: an export over 2 GB keeps a file per parameter beside its .onnx,
    # named after the parameter, so two exports never share a folder.
    other = use_onnxruntime_encoder(tiny_sam("vit", seed=2), cache_dir=tmp_path).image_encoder.onnx_path
    assert len(list(tmp_path.glob("*/*.onnx"))) == 2 and other.parent != files[0].parent
    assert not list(tmp_path.glob("*/*.tmp*"))


def test_switching_backend_reuses_the_export(tmp_path):
    model = use_onnxruntime_encoder(tiny_sam("vit", seed=1), cache_dir=tmp_path)
    path = model.image_encoder.onnx_path
    use_openvino_encoder(model, cache_dir=tmp_path)
    assert isinstance(model.image_encoder, OpenVinoImageEncoder) and model.image_encoder.onnx_path == path
    assert use_openvino_encoder(model).image_encoder.onnx_path == path  # already that backend: unchanged
    assert list(tmp_path.glob("*/*.onnx")) == [path]


def test_pipeline_backend_names_follow_the_module():
    from grounded.nodes.segment import ENCODER_BACKENDS
    from grounded.sam.onnx_encoder import BACKENDS

    assert ENCODER_BACKENDS == ("auto", "torch", *BACKENDS)


def test_unknown_backend_and_gpu_input_are_refused(tmp_path):
    model = tiny_sam("vit")
    with pytest.raises(ValueError, match="unknown image encoder backend 'tensorrt'"):
        use_exported_encoder(model, "tensorrt", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown image_encoder_backend 'tensorrt'"):
        from grounded.sam import from_pretrained

        from_pretrained(tmp_path / "missing", image_encoder_backend="tensorrt")
    use_openvino_encoder(model, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="openvino image encoder runs on the CPU"):
        model.image_encoder(torch.zeros(1, 3, 8, 8, device="meta"))


def test_a_missing_runtime_names_the_package(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_openvino(name, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_openvino)
    with pytest.raises(ImportError, match="needs the 'openvino' package: pip install 'grounded\\[onnx\\]'"):
        use_openvino_encoder(tiny_sam("vit"), cache_dir=tmp_path)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_real_mobile_sam_encoder_on_each_backend(backend, mobile_sam_checkpoint, tmp_path):
    from grounded.sam import from_pretrained

    torch_model = from_pretrained(mobile_sam_checkpoint)
    exported = use_exported_encoder(from_pretrained(mobile_sam_checkpoint), backend, cache_dir=tmp_path)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected, got = torch_model.image_encoder(x), exported.image_encoder(x)
    # float32 all the way: OpenVINO's bf16 default on bf16-capable CPUs would be near 1e-2.
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_tiny_vit_export_layout_computes_the_same_embedding():
    # TinyViT lays some tensors out differently for its export (so onnxruntime runs fewer Transposes);
    # that layout must be the same function as the PyTorch encoder.
    from grounded.sam.cpu.tiny_vit import export_layout

    encoder = tiny_sam("tiny_vit").image_encoder
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = encoder(x)
        with export_layout(encoder):
            got = encoder(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def test_the_exported_encoder_keeps_its_module_and_steps_aside(tmp_path):
    """The state dict, saving and training stay the encoder's; under autograd, autocast and in
    training mode the PyTorch forward runs (no export there); "torch" gives the plain module back."""
    model = tiny_sam("tiny_vit", seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_openvino_encoder(model, cache_dir=tmp_path)
    encoder = model.image_encoder
    assert isinstance(encoder, OpenVinoImageEncoder) and model.state_dict().keys() == state.keys()
    x = torch.randn(1, 3, 1024, 1024)
    runs = []
    encoder._run = lambda image, run=encoder._run: runs.append(1) or run(image)
    with torch.no_grad():
        exported = encoder(x)
        assert runs == [1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(x)
    with_grad = encoder(x)
    assert with_grad.requires_grad
    assert ((exported - with_grad.detach()).norm() / exported.norm()) < 1e-4
    with torch.no_grad():
        encoder.train()  # (batch norms on the batch's statistics, which the call updates)
        encoder(x)
        encoder.eval()
    assert runs == [1]
    use_exported_encoder(model, "torch")
    assert type(model.image_encoder).__name__ == "TinyViT" and not hasattr(model.image_encoder, "onnx_path")


@pytest.mark.parametrize("encoder, dtype, want", [("tiny_vit", None, "openvino"), ("vit", None, "torch"),
                                                  ("tiny_vit", torch.bfloat16, "torch")])
def test_from_pretrained_picks_the_fastest_backend_and_says_so(encoder, dtype, want, tmp_path, monkeypatch, capsys):
    from grounded.sam import from_pretrained, save_pretrained

    monkeypatch.setenv("GROUNDED_CACHE", str(tmp_path / "cache"))
    folder = save_pretrained(tiny_sam(encoder), tmp_path / "model")
    model = from_pretrained(folder, dtype=dtype)
    assert f"image encoder on {want}" in capsys.readouterr().err
    assert (type(model.image_encoder).__name__ == "OpenVinoTinyViT") == (want == "openvino")
    assert model.state_dict().keys() == tiny_sam(encoder).state_dict().keys()


def test_two_processes_share_the_first_export(tmp_path):
    """Two processes loading the same weights at once with an empty cache: one export, read by both."""
    import subprocess
    import sys

    from grounded.sam import save_pretrained

    folder = save_pretrained(tiny_sam("tiny_vit", seed=9), tmp_path / "model")
    script = f"""
import sys, torch
from grounded.sam import from_pretrained
model = from_pretrained({str(folder)!r}, image_encoder_backend="openvino")
with torch.no_grad():
    out = model.image_encoder(torch.ones(1, 3, 1024, 1024))
torch.save(out, sys.argv[1])
"""
    env = {**__import__("os").environ, "GROUNDED_CACHE": str(tmp_path / "cache")}
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"out{i}.pt")], env=env,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stderr.read()[-2000:]
    exports = list((tmp_path / "cache" / "onnx").glob("*/*.onnx"))
    assert len(exports) == 1 and not list((tmp_path / "cache" / "onnx").glob("*/*.tmp*"))
    assert torch.equal(torch.load(tmp_path / "out0.pt"), torch.load(tmp_path / "out1.pt"))


def test_auto_keeps_torch_on_a_gpu_and_the_drop_in_registry_stays_torch(tmp_path):
    """`auto` never exports for a GPU (asked of the chooser with the device, as no GPU is here), and
    segment_anything's drop-in `sam_model_registry` builds the PyTorch encoder whatever the model."""
    from grounded.sam import sam_model_registry
    from grounded.sam.onnx_encoder import BACKENDS, ExportedImageEncoder, auto_backend
    from grounded.sam.tiny_vit import TinyViT

    model = tiny_sam("tiny_vit")
    assert auto_backend(model)[0] in BACKENDS
    assert auto_backend(model, device="cuda") == ("torch", "on cuda")
    assert auto_backend(model, dtype=torch.float16)[0] == "torch"
    registry_model = sam_model_registry["vit_t"]()
    assert isinstance(registry_model.image_encoder, TinyViT)  # the CPU wing's subclass: still PyTorch
    assert not isinstance(registry_model.image_encoder, ExportedImageEncoder)

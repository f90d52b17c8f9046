"""The image encoder exported to ONNX and run by onnxruntime or OpenVINO behind the `nn.Module`
interface the model already uses.

On a CPU both run MobileSAM's TinyViT well ahead of eager PyTorch (fused convolution, GELU and
layer-norm kernels). `use_exported_encoder(sam, backend)` exports the model's own encoder once
(opset 17; the weights' sha256 names its folder in the cache, so a later load reuses it) and swaps in
`OnnxImageEncoder` or `OpenVinoImageEncoder`; everything that calls `model.image_encoder(x)` (the
predictor, the mask generator, `Sam.forward`) is unchanged. Inference only: no gradients flow through it.

TinyViT exports in a layout chosen for onnxruntime (its `torch.onnx.is_in_onnx_export()` branches:
MLPs and qkv as 1x1 convolutions in onnxruntime's blocked layout, 4-D permutes it folds into layout
reorders, fused neck layer norms); the same function as the PyTorch encoder. On this project's 2-core
machine (bench/README.md), against the reference module exported to onnxruntime: onnxruntime runs
this export level with it (0.94-1.04x over runs, 1.07-1.10x on one thread), OpenVINO runs it
1.14-1.21x faster (1.17x on one), in float32 (its precision hint is pinned: it would pick bf16 on a
CPU that has it).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn


# Part of the cache file's name: bump it whenever the exported graph changes (not only the weights),
# so a cache written by older code is not reused. 2: TinyViT's export-only layout (fewer Transposes,
# fused neck layer norms, MLPs and qkv as 1x1 convolutions).
EXPORT_VERSION = 2


def default_cache_dir() -> Path:
    from ..weights import cache_root

    return cache_root() / "onnx"


def _weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def export_encoder(encoder: nn.Module, path: Union[str, Path]) -> Path:
    """Export `encoder` (float32, CPU) to ONNX at `path` for one image at a time (TinyViT's traced
    reshapes fix the batch size); written to a temporary name first, so an interrupted export never
    leaves a half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = encoder.img_size
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    was_training = encoder.training
    encoder.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (torch.zeros(1, 3, size, size),), str(tmp), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["embedding"])
        os.replace(tmp, path)
    finally:
        encoder.train(was_training)
        tmp.unlink(missing_ok=True)
    return path


class ExportedImageEncoder(nn.Module):
    """`model.image_encoder` run from its ONNX export: Bx3xSxS float32 -> Bx256x(S/16)x(S/16), one
    image at a time (TinyViT's traced reshapes fix the batch size), on `threads` CPU threads (default:
    torch's count). Subclasses run one 1x3xSxS array."""

    backend = ""

    def __init__(self, onnx_path: Union[str, Path], img_size: int, threads: Optional[int] = None):
        super().__init__()
        self.onnx_path = Path(onnx_path)
        self.img_size = img_size
        self.threads = threads or torch.get_num_threads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError(f"the {self.backend} image encoder runs on the CPU; keep the model on the CPU "
                             "or use the PyTorch encoder on a GPU")
        images = x.detach().float().contiguous().numpy()
        embeddings = [self._run(image[None]) for image in images]
        return torch.from_numpy(np.concatenate(embeddings)).to(x.dtype)

    def _run(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"onnx_path={str(self.onnx_path)!r}, img_size={self.img_size}"


class OnnxImageEncoder(ExportedImageEncoder):
    """The export run by an onnxruntime session."""

    backend = "onnxruntime"

    def __init__(self, onnx_path: Union[str, Path], img_size: int, threads: Optional[int] = None):
        super().__init__(onnx_path, img_size, threads)
        ort = _import_backend("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    def _run(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": image})[0]


class OpenVinoImageEncoder(ExportedImageEncoder):
    """The export compiled by OpenVINO for the CPU: float32 (never its bf16 default on CPUs that have
    bf16), latency mode, and without pinning threads to cores (this runs inside the caller's process)."""

    backend = "openvino"

    def __init__(self, onnx_path: Union[str, Path], img_size: int, threads: Optional[int] = None):
        super().__init__(onnx_path, img_size, threads)
        ov = _import_backend("openvino")
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(core.read_model(str(self.onnx_path)), "CPU", config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request, whose output buffer the next call reuses

    def _run(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            self._request.infer({0: image})
            return self._request.get_output_tensor(0).data.copy()


_ENCODERS = {"onnxruntime": OnnxImageEncoder, "openvino": OpenVinoImageEncoder}
BACKENDS = tuple(_ENCODERS)


def _import_backend(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"the {name} image encoder needs the {name!r} package: "
                          "pip install 'grounded[onnx]'") from error


def use_exported_encoder(sam, backend: str, cache_dir: Optional[Union[str, Path]] = None,
                         threads: Optional[int] = None):
    """Swap `sam.image_encoder` for its ONNX export run by `backend` ("onnxruntime" or "openvino"),
    exported on first use into `cache_dir` (default `~/.cache/grounded/onnx`). Returns `sam`."""
    if backend not in _ENCODERS:
        raise ValueError(f"unknown image encoder backend {backend!r}; use one of {', '.join(BACKENDS)}")
    encoder = sam.image_encoder
    if isinstance(encoder, ExportedImageEncoder):
        if encoder.backend != backend:  # the export is already there; only the runtime changes
            sam.image_encoder = _ENCODERS[backend](encoder.onnx_path, encoder.img_size, threads)
        return sam
    if next(encoder.parameters()).device.type != "cpu":
        raise ValueError(f"the {backend} image encoder is for CPU models; this model is on "
                         f"{next(encoder.parameters()).device}")
    encoder = encoder.float()
    # One folder per export: an encoder over 2 GB (ViT-H) is saved as the .onnx plus a file per
    # parameter, named after it, which another export in a shared folder would overwrite.
    folder = f"{type(encoder).__name__}-v{EXPORT_VERSION}-{_weights_digest(encoder)}"
    path = Path(cache_dir or default_cache_dir()) / folder / "encoder.onnx"
    if not path.exists():
        export_encoder(encoder, path)
    sam.image_encoder = _ENCODERS[backend](path, encoder.img_size, threads)
    return sam


def use_onnxruntime_encoder(sam, cache_dir: Optional[Union[str, Path]] = None, threads: Optional[int] = None):
    """`use_exported_encoder(sam, "onnxruntime", ...)`."""
    return use_exported_encoder(sam, "onnxruntime", cache_dir, threads)


def use_openvino_encoder(sam, cache_dir: Optional[Union[str, Path]] = None, threads: Optional[int] = None):
    """`use_exported_encoder(sam, "openvino", ...)`."""
    return use_exported_encoder(sam, "openvino", cache_dir, threads)

"""The image encoder exported to ONNX and run by onnxruntime or OpenVINO, inside the encoder module
the model already has.

On a CPU both run MobileSAM's TinyViT well ahead of eager PyTorch (fused convolution, GELU and
layer-norm kernels). `use_exported_encoder(sam, backend)` exports the model's own encoder once
(opset 17; the weights' sha256 names its folder in the cache, so a later load reuses it) and gives
`sam.image_encoder` a subclass (`OnnxImageEncoder`, `OpenVinoImageEncoder`) whose forward runs the
export for float32 inference on the CPU. The module keeps its parameters and state-dict names (it
saves, loads and trains as before); under autograd, autocast, tracing, in training mode or for
another dtype its forward is the PyTorch encoder's own, so no export ever runs there.
`use_exported_encoder(sam, "torch")` gives the plain encoder back.

`from_pretrained(..., image_encoder_backend="auto")` (the default) picks the fastest backend installed
for the model on its device (`auto_backend`): OpenVINO, else onnxruntime, for TinyViT on a CPU in
float32; PyTorch for the ViTs (their exports ran slower than torch here) and on GPUs.

Exports are made under a lock on their cache folder and written under a temporary name, then
renamed: processes that load the same weights at once (Ray actors, parallel runs) export once and
never read a half-written file.

TinyViT exports in a layout chosen for onnxruntime (`cpu.tiny_vit.export_layout`: MLPs and qkv as
1x1 convolutions in onnxruntime's blocked layout, 4-D permutes it folds into layout reorders, fused
neck layer norms); the same function as the PyTorch encoder. On this project's 2-core
machine (bench/README.md), against the reference module exported to onnxruntime: onnxruntime runs
this export level with it (0.94-1.04x over runs, 1.07-1.10x on one thread), OpenVINO runs it
1.14-1.21x faster (1.17x on one), in float32 (its precision hint is pinned: it would pick bf16 on a
CPU that has it).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import threading
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .cpu.tiny_vit import export_layout
from .image_encoder import ImageEncoderViT
from .tiny_vit import TinyViT


# Part of the cache file's name: bump it whenever the exported graph changes (not only the weights),
# so a cache written by older code is not reused. 2: TinyViT's export-only layout (fewer Transposes,
# fused neck layer norms, MLPs and qkv as 1x1 convolutions). 3: that layout moved to the CPU wing.
EXPORT_VERSION = 3


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
    reshapes fix the batch size), unless another process did: under a lock on the folder, written to
    a temporary name and renamed, so an interrupted export never leaves a half file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        if path.exists():  # another process exported it while this one waited
            return path
        size = encoder.img_size
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        was_training = encoder.training
        encoder.eval()
        try:
            with warnings.catch_warnings(), torch.no_grad(), export_layout(encoder):
                warnings.simplefilter("ignore")
                torch.onnx.export(encoder, (torch.zeros(1, 3, size, size),), str(tmp), dynamo=False, opset_version=17,
                                  input_names=["image"], output_names=["embedding"])
            os.replace(tmp, path)
        finally:
            encoder.train(was_training)
            tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on folder/.lock for the block (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ExportedImageEncoder(nn.Module):
    """Mixed in before an image encoder's class (`OnnxImageEncoder`, `OpenVinoImageEncoder`): its
    forward runs the encoder's ONNX export for float32 inference on the CPU, Bx3xSxS ->
    Bx256x(S/16)x(S/16), one image at a time (TinyViT's traced reshapes fix the batch size), on
    `threads` CPU threads (default: torch's count), and the PyTorch encoder's own forward elsewhere."""

    backend = ""

    def start(self, onnx_path: Union[str, Path], threads: Optional[int] = None) -> None:
        self.onnx_path = Path(onnx_path)
        self.threads = threads or torch.get_num_threads()
        self._open()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError(f"the {self.backend} image encoder runs on the CPU; keep the model on the CPU "
                             "or use the PyTorch encoder on a GPU")
        if (self.training or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or x.dtype != torch.float32
                or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()):
            return super().forward(x)
        images = x.contiguous().numpy()
        return torch.from_numpy(np.concatenate([self._run(image[None]) for image in images]))

    def _open(self) -> None:
        raise NotImplementedError

    def _run(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, onnx_path={str(self.onnx_path)!r}"


class OnnxImageEncoder(ExportedImageEncoder):
    """The export run by an onnxruntime session."""

    backend = "onnxruntime"

    def _open(self) -> None:
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

    def _open(self) -> None:
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
# The exported encoders: each runtime mixed into each core encoder class (fixed classes, so models
# pickle by name; the runtime itself is not pickled).
def _core_class(cls: type) -> type:
    return next(c for c in cls.__mro__ if c in (ImageEncoderViT, TinyViT))


OnnxImageEncoderViT = type("OnnxImageEncoderViT", (OnnxImageEncoder, ImageEncoderViT), {"__module__": __name__})
OnnxTinyViT = type("OnnxTinyViT", (OnnxImageEncoder, TinyViT), {"__module__": __name__})
OpenVinoImageEncoderViT = type("OpenVinoImageEncoderViT", (OpenVinoImageEncoder, ImageEncoderViT), {"__module__": __name__})
OpenVinoTinyViT = type("OpenVinoTinyViT", (OpenVinoImageEncoder, TinyViT), {"__module__": __name__})
_EXPORTED = {(cls.backend, _core_class(cls)): cls
             for cls in (OnnxImageEncoderViT, OnnxTinyViT, OpenVinoImageEncoderViT, OpenVinoTinyViT)}


def _import_backend(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"the {name} image encoder needs the {name!r} package: "
                          "pip install 'grounded[onnx]'") from error


def auto_backend(sam, device: Optional[Union[str, torch.device]] = None, dtype: Optional[torch.dtype] = None) -> Tuple[str, str]:
    """(backend, why): the fastest image-encoder backend installed for this model on its device."""
    import importlib.util

    device = torch.device(device) if device is not None else sam.device
    dtype = dtype or sam.dtype
    if device.type != "cpu":
        return "torch", f"on {device.type}"
    if dtype != torch.float32:
        return "torch", f"{str(dtype).replace('torch.', '')} weights (the exports are float32)"
    if not isinstance(sam.image_encoder, TinyViT):
        return "torch", "a ViT encoder (its exports ran slower than torch on a CPU)"
    for backend in ("openvino", "onnxruntime"):
        if importlib.util.find_spec(backend) is not None:
            return backend, "TinyViT on a CPU"
    return "torch", "neither openvino nor onnxruntime is installed"


def use_exported_encoder(sam, backend: str, cache_dir: Optional[Union[str, Path]] = None,
                         threads: Optional[int] = None):
    """Run `sam.image_encoder` from its ONNX export in `backend` ("onnxruntime" or "openvino"),
    exported on first use into `cache_dir` (default `~/.cache/grounded/onnx`), or ("torch") in
    PyTorch again. Returns `sam`."""
    if backend not in _ENCODERS and backend != "torch":
        raise ValueError(f"unknown image encoder backend {backend!r}; use one of torch, {', '.join(BACKENDS)}")
    encoder = sam.image_encoder
    if isinstance(encoder, ExportedImageEncoder):
        if encoder.backend == backend:
            return sam
        path, core = encoder.onnx_path, _core_class(type(encoder))
        for name in ("onnx_path", "threads", "session", "compiled", "_request", "_lock"):
            encoder.__dict__.pop(name, None)
        encoder.__class__ = core
        if backend == "torch":
            return sam
    elif backend == "torch":
        return sam
    else:
        path = _exported(encoder, backend, cache_dir)
    encoder.__class__ = _EXPORTED[backend, _core_class(type(encoder))]
    encoder.start(path, threads)
    return sam


def _exported(encoder: nn.Module, backend: str, cache_dir) -> Path:
    """The export of this encoder's weights in the cache, made now if missing."""
    first = next(encoder.parameters())
    if first.device.type != "cpu":
        raise ValueError(f"the {backend} image encoder is for CPU models; this model is on {first.device}")
    _import_backend(backend)  # fail before exporting when the runtime is missing
    source = encoder if first.dtype == torch.float32 else copy.deepcopy(encoder).float()
    # One folder per export: an encoder over 2 GB (ViT-H) is saved as the .onnx plus a file per
    # parameter, named after it, which another export in a shared folder would overwrite.
    folder = f"{_core_class(type(encoder)).__name__}-v{EXPORT_VERSION}-{_weights_digest(source)}"
    path = Path(cache_dir or default_cache_dir()) / folder / "encoder.onnx"
    return path if path.exists() else export_encoder(source, path)


def use_onnxruntime_encoder(sam, cache_dir: Optional[Union[str, Path]] = None, threads: Optional[int] = None):
    """`use_exported_encoder(sam, "onnxruntime", ...)`."""
    return use_exported_encoder(sam, "onnxruntime", cache_dir, threads)


def use_openvino_encoder(sam, cache_dir: Optional[Union[str, Path]] = None, threads: Optional[int] = None):
    """`use_exported_encoder(sam, "openvino", ...)`."""
    return use_exported_encoder(sam, "openvino", cache_dir, threads)

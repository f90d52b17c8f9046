"""An image encoder run by onnxruntime behind the `nn.Module` interface the model already uses.

On a CPU, onnxruntime runs MobileSAM's TinyViT about 1.4-1.7x faster than eager PyTorch (its fused
convolution, GELU and layer-norm kernels). `use_onnxruntime_encoder(sam)` exports the model's own
encoder once (opset 17; the weights' sha256 names the file in the cache, so a later load reuses it)
and swaps in `OnnxImageEncoder`; everything that calls `model.image_encoder(x)` (the predictor,
the mask generator, `Sam.forward`) is unchanged. Inference only: no gradients flow through it.

TinyViT exports in a layout chosen for onnxruntime (its `torch.onnx.is_in_onnx_export()` branches:
MLPs and qkv as 1x1 convolutions in onnxruntime's blocked layout, 4-D permutes it folds into layout
reorders, fused neck layer norms); the same function as the PyTorch encoder, and about 10% faster
than the plain export of MobileSAM's own module on one thread (level within noise on two, 0.94-1.03x;
bench/README.md).
"""

from __future__ import annotations

import hashlib
import os
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


class OnnxImageEncoder(nn.Module):
    """`model.image_encoder` run by an onnxruntime session: Bx3xSxS float32 -> Bx256x(S/16)x(S/16)."""

    def __init__(self, onnx_path: Union[str, Path], img_size: int, threads: Optional[int] = None):
        super().__init__()
        import onnxruntime as ort

        self.onnx_path = Path(onnx_path)
        self.img_size = img_size
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError("the onnxruntime image encoder runs on the CPU; keep the model on the CPU "
                             "or use the PyTorch encoder on a GPU")
        images = x.detach().float().contiguous().numpy()
        embeddings = [self.session.run(None, {"image": image[None]})[0] for image in images]
        return torch.from_numpy(np.concatenate(embeddings)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"onnx_path={str(self.onnx_path)!r}, img_size={self.img_size}"


def use_onnxruntime_encoder(sam, cache_dir: Optional[Union[str, Path]] = None, threads: Optional[int] = None):
    """Swap `sam.image_encoder` for an onnxruntime session of the same weights (exported on first
    use into `cache_dir`, default `~/.cache/grounded/onnx`). Returns `sam`."""
    encoder = sam.image_encoder
    if isinstance(encoder, OnnxImageEncoder):
        return sam
    if next(encoder.parameters()).device.type != "cpu":
        raise ValueError("the onnxruntime image encoder is for CPU models; this model is on "
                         f"{next(encoder.parameters()).device}")
    encoder = encoder.float()
    name = f"{type(encoder).__name__}-v{EXPORT_VERSION}-{_weights_digest(encoder)}.onnx"
    path = Path(cache_dir or default_cache_dir()) / name
    if not path.exists():
        export_encoder(encoder, path)
    sam.image_encoder = OnnxImageEncoder(path, encoder.img_size, threads)
    return sam

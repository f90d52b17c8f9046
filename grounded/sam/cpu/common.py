"""When the wing applies, and oneDNN's fused linear layers that its encoders use."""

from typing import Optional

import torch
from torch import nn


def tracing() -> bool:
    """An export, tracer or compiler is at work: it gets the core's plain modules."""
    return (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.compiler.is_compiling())


def eager_cpu_float32(*tensors: torch.Tensor) -> bool:
    """Float32 tensors on the CPU, outside autocast and tracing."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled("cpu") and not tracing())


def inference_applies(*tensors: torch.Tensor) -> bool:
    """The wing's condition: float32 inference on the CPU, without autograd, autocast or tracing.
    Everything else (GPUs, bf16/fp16 weights or autocast, training, exports, torch.compile) runs
    the core's reference modules."""
    return not torch.is_grad_enabled() and eager_cpu_float32(*tensors)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_linear(x: torch.Tensor, layer: nn.Linear, activation: Optional[nn.Module] = None,
                 residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """residual + activation(layer(x)) (either optional), in one oneDNN call where the activation is
    GELU or absent: the same values up to float rounding. Besides saving a pass over the output per
    fused step, oneDNN's GEMM ran 13-20% faster than the default one on ViT-B's shapes (bench/README.md).
    Called only where `inference_applies`."""
    fusable = activation is None or (isinstance(activation, nn.GELU) and residual is None)
    if fusable and layer.weight.dtype == x.dtype and onednn_available():
        pointwise = torch.ops.mkldnn._linear_pointwise
        if residual is not None:
            return pointwise.binary(x, residual, layer.weight, layer.bias, "add")
        if activation is not None:
            return pointwise(x, layer.weight, layer.bias, "gelu", [], activation.approximate)
        return pointwise(x, layer.weight, layer.bias, "none", [], "")
    y = layer(x)
    if activation is not None:
        y = activation(y)
    return y if residual is None else residual + y

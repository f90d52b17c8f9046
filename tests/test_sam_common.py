"""`grounded.sam.common.linear`: oneDNN's fused linear for float32 CPU inference, the plain modules
everywhere else, the same values either way."""

import pytest
import torch
from torch import nn

from grounded.sam.common import linear, onednn_fusion_applies


@pytest.mark.parametrize("case", ["plain", "gelu", "residual", "gelu_and_residual"])
def test_linear_equals_the_modules(case):
    torch.manual_seed(0)
    layer, act = nn.Linear(24, 40), nn.GELU()
    x, residual = torch.randn(2, 5, 24), torch.randn(2, 5, 40)
    activation = act if "gelu" in case else None
    extra = residual if "residual" in case else None
    want = layer(x)
    want = act(want) if activation is not None else want
    want = want + residual if extra is not None else want
    with torch.no_grad():
        got = linear(x, layer, activation, extra)
    assert got.shape == want.shape
    assert torch.allclose(got, want.detach(), atol=1e-5, rtol=1e-5)


def test_fusion_only_for_float32_cpu_inference():
    x = torch.randn(3, 8)
    assert not onednn_fusion_applies(x)  # autograd on
    with torch.no_grad():
        assert onednn_fusion_applies(x) == torch.backends.mkldnn.is_available()
        assert not onednn_fusion_applies(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_fusion_applies(x)


def test_linear_keeps_autograd():
    layer = nn.Linear(6, 4)
    out = linear(torch.randn(2, 6), layer, nn.GELU(), None)
    out.sum().backward()
    assert layer.weight.grad is not None

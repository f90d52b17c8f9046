"""`grounded.sam.cpu.common.fused_linear`: oneDNN's fused linear layer equals the plain modules."""

import pytest
import torch
from torch import nn

from grounded.sam.cpu.common import fused_linear, inference_applies


@pytest.mark.parametrize("case", ["plain", "gelu", "residual", "gelu_and_residual"])
def test_fused_linear_equals_the_modules(case):
    torch.manual_seed(0)
    layer, act = nn.Linear(24, 40), nn.GELU()
    x, residual = torch.randn(2, 5, 24), torch.randn(2, 5, 40)
    activation = act if "gelu" in case else None
    extra = residual if "residual" in case else None
    want = layer(x)
    want = act(want) if activation is not None else want
    want = want + residual if extra is not None else want
    with torch.no_grad():
        got = fused_linear(x, layer, activation, extra)
    assert got.shape == want.shape
    assert torch.allclose(got, want.detach(), atol=1e-5, rtol=1e-5)


def test_the_wing_applies_to_float32_cpu_inference_only():
    x = torch.randn(3, 8)
    assert not inference_applies(x)  # autograd on
    with torch.no_grad():
        assert inference_applies(x)
        assert not inference_applies(x.double())
        assert not inference_applies(x, x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not inference_applies(x)
    with torch.inference_mode():
        assert inference_applies(x)

"""grounded/sam/cpu/kernels.py: the numba loops against the torch operations they replace, and the
torch operations that run without numba."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounded.sam.cpu import kernels as cpu_kernels
from grounded.sam.cpu import masks

numba = pytest.importorskip("numba")


@pytest.fixture(scope="module")
def kernels():
    loaded = cpu_kernels.load()
    assert loaded is not None, "numba is installed, so the kernels must load"
    return loaded


def test_gelu_is_exact_to_a_few_ulp(kernels):
    x = np.linspace(-8, 8, 2_000_001, dtype=np.float32)
    every_50th = x[::50].astype(np.float64)
    exact = 0.5 * every_50th * (1 + np.array([math.erf(v / math.sqrt(2)) for v in every_50th]))
    out = np.empty_like(x)
    kernels.gelu(x, out)
    assert np.abs(out[::50] - exact).max() < 1.5e-6
    # against torch's own (approximate-erf) GELU over every point
    assert np.abs(out - F.gelu(torch.from_numpy(x)).numpy()).max() < 2e-6
    special = np.array([np.nan, np.inf, 0.0, -0.0, 1e-30, -1e-30], dtype=np.float32)
    got = np.empty_like(special)
    kernels.gelu(special, got)
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == 0 and got[3] == 0
    assert abs(got[4] - 5e-31) < 1e-36 and abs(got[5] + 5e-31) < 1e-36


def test_layer_norm_gelu_equals_torch(kernels):
    g = torch.Generator().manual_seed(0)
    rows, width, c = 3, 5, 16
    y = torch.randn(rows * width, 4 * c, generator=g) * 3 + 1
    weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
    out = torch.empty(rows, 2, width, 2, c)
    kernels.layer_norm_gelu(y.numpy(), weight.numpy(), bias.numpy(), np.float32(1e-6), out.numpy())
    normed = F.layer_norm(y.view(-1, c), (c,), weight, bias, 1e-6).view(rows, width, 2, 2, c).transpose(1, 2)
    torch.testing.assert_close(out, F.gelu(normed), rtol=1e-5, atol=2e-6)


def test_gelu_hyper_equals_torch(kernels):
    g = torch.Generator().manual_seed(1)
    c, points, masks = 8, 37, 3
    z = torch.randn(4 * c, points, generator=g) * 2
    bias, hyper = torch.randn(4 * c, generator=g), torch.randn(masks, c, generator=g)
    out = torch.full((4, masks, points), float("nan"))  # every value must be written
    kernels.gelu_hyper(z.numpy(), bias.numpy(), hyper.numpy(), out.numpy())
    want = hyper @ F.gelu(z + bias[:, None]).view(4, c, points)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("original_size, input_size", [
    ((512, 512), (1024, 1024)),
    ((480, 640), (768, 1024)),
    ((1500, 1100), (1024, 751)),
    ((7, 1500), (5, 1024)),
])
@pytest.mark.parametrize("noise", [False, True])
def test_thresholding_compiled_equals_torch_path_bit_for_bit(original_size, input_size, noise, kernels):
    """Sure pixels and contour pixels, or for a chunk of noise the dense fallback: the same masks."""
    from test_mask_upsample import smooth_logits

    low = smooth_logits(3, 3, seed=sum(input_size))
    noisy = torch.randn(256, 256, generator=torch.Generator().manual_seed(5))  # contours everywhere
    if noise:
        low[1:] = noisy
    else:
        low[2, 1] = noisy
    low[0, 0] = 3.0  # all above
    low[0, 1] = -3.0  # all below
    args = (1024, input_size, original_size, 0.5)
    compiled = masks.threshold_upsampled(low, *args, kernels)
    torch_path = masks.threshold_upsampled(low, *args, None)
    assert torch.equal(compiled, torch_path)
    assert compiled[0, 0].all() and not compiled[0, 1].any()


def test_without_numba_the_wing_runs_torch_operations():
    """In a process where numba cannot be imported, load() answers None and the decoder's upscaling
    and the thresholding take their torch operations."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["numba"] = None  # an import of numba now raises ImportError
import numpy as np
from grounded.sam import SamPredictor, cpu
from grounded.sam.cpu import kernels
from grounded.testing import tiny_sam
assert kernels.load() is None
model = tiny_sam("vit")
predictor = SamPredictor(model)
predictor.set_image(np.zeros((64, 80, 3), np.uint8))
predictor.predict(box=np.array([5.0, 5.0, 60.0, 50.0]))
print(sorted(set(cpu.paths_taken(model))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(
        ["decoder/low_rank", "encoder/vit_blocked", "masks/torch", "upscaling/torch"])

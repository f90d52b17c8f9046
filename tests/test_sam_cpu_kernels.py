"""sam/cpu_kernels.py: the numba loops against the torch operations they replace, and the torch
path that runs without numba."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounded.sam import cpu_kernels
from grounded.sam.utils import mask_upsample

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


def _decoder_paths(monkeypatch, compiled):
    from grounded.sam import fast_decoder

    if not compiled:
        monkeypatch.setattr(fast_decoder, "_upscaling_kernels", lambda *args: None)


@pytest.mark.parametrize("multimask", [True, False])
def test_decoder_upscaling_compiled_equals_torch_path(multimask, monkeypatch):
    """The whole decoder, low-rank (shared tokens) and regrouped (a mask prompt's dense embedding),
    through the compiled upscaling and through torch's; a 20x20 grid leaves a partial tile of rows."""
    from grounded.sam import fast_decoder
    from test_sam_decoder_fast import decoder, inputs

    dec = decoder(seed=3)
    results = {}
    for compiled in (True, False):
        with monkeypatch.context() as patch:
            _decoder_paths(patch, compiled)
            for dense_kind in ("shared", "per_prompt"):
                image, pe, sparse, dense = inputs(32, 5, 4, grid=20, per_prompt_dense=dense_kind == "per_prompt")
                with torch.no_grad():
                    if compiled:
                        assert fast_decoder._upscaling_kernels(dec, None, sparse) is not None
                    results[compiled, dense_kind] = dec(image, pe, sparse, dense, multimask)
    for dense_kind in ("shared", "per_prompt"):
        (masks, iou), (want_masks, want_iou) = results[True, dense_kind], results[False, dense_kind]
        assert masks.shape == (5, 3 if multimask else 1, 80, 80)
        assert ((masks - want_masks).abs().max() / want_masks.abs().max()) < 1e-5
        torch.testing.assert_close(iou, want_iou)


def test_upscaling_kernels_only_where_they_apply():
    from grounded.sam import fast_decoder
    from test_sam_decoder_fast import decoder

    dec = decoder(seed=4)
    tokens, keys = torch.zeros(2, 3, 8), torch.zeros(2, 16, 32)
    with torch.no_grad():
        assert fast_decoder._upscaling_kernels(dec, keys, tokens) is not None
        assert fast_decoder._upscaling_kernels(dec, keys.double(), tokens) is None
        dec.output_upscaling[4] = torch.nn.GELU(approximate="tanh")  # a different function: torch's path
        assert fast_decoder._upscaling_kernels(dec, keys, tokens) is None
    dec.output_upscaling[4] = torch.nn.GELU()
    # training: gradients reach the upscaling's weights, or the tokens, through torch's path only
    assert fast_decoder._upscaling_kernels(dec, keys, tokens) is None
    dec.output_upscaling.requires_grad_(False)
    assert fast_decoder._upscaling_kernels(dec, keys, tokens) is not None
    assert fast_decoder._upscaling_kernels(dec, keys.requires_grad_(), tokens) is None


@pytest.mark.parametrize("original_size, input_size", [
    ((512, 512), (1024, 1024)),
    ((480, 640), (768, 1024)),
    ((1500, 1100), (1024, 751)),
    ((7, 1500), (5, 1024)),
])
@pytest.mark.parametrize("noise", [False, True])
def test_thresholding_compiled_equals_torch_path_bit_for_bit(original_size, input_size, noise, monkeypatch):
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
    compiled = mask_upsample.threshold_upsampled(low, *args)
    monkeypatch.setattr(mask_upsample, "_kernels", lambda logits: None)
    torch_path = mask_upsample.threshold_upsampled(low, *args)
    assert torch.equal(compiled, torch_path)
    assert compiled[0, 0].all() and not compiled[0, 1].any()


def test_without_numba_everything_runs_on_torch(monkeypatch):
    """load() answers None when numba cannot be imported, and the callers keep their torch path."""
    from test_sam_decoder_fast import decoder, inputs, reference

    def missing():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(cpu_kernels, "_compile", missing)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_kernels", None)
    assert cpu_kernels.load() is None
    dec = decoder(seed=5)
    image, pe, sparse, dense = inputs(32, 2, 3)
    with torch.no_grad():
        masks, _ = dec(image, pe, sparse, dense, True)
        want, _ = reference(dec, image, pe, sparse, dense, True)
    assert ((masks - want).abs().max() / want.abs().max()) < 2e-5
    low = torch.randn(1, 2, 256, 256)
    got = mask_upsample.threshold_upsampled(low, 1024, (1024, 1024), (64, 64), 0.0)
    assert got.shape == (1, 2, 64, 64)

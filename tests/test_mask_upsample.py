"""The wing's thresholding (grounded/sam/cpu/masks.py: `Sam.threshold_masks` without the
full-resolution logits) against the reference's two bilinear passes, in torch operations and in
the compiled loops."""

import pytest
import torch
import torch.nn.functional as F

from grounded.sam.cpu import kernels
from grounded.sam.cpu.masks import composed_window, threshold_upsampled


def reference_logits(low_res, padded, input_size, original_size):
    """segment_anything's Sam.postprocess_masks."""
    masks = F.interpolate(low_res, (padded, padded), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def smooth_logits(n, m, size=256, cells=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, m, cells, cells, generator=g) * 6
    return F.interpolate(coarse, (size, size), mode="bicubic", align_corners=False)


@pytest.mark.parametrize("original_size, input_size", [
    ((512, 512), (1024, 1024)),  # downscale by 2
    ((480, 640), (768, 1024)),  # landscape, padded rows cropped
    ((1500, 1100), (1024, 751)),  # larger than the input: the band widens
    ((100, 37), (1024, 379)),  # tall and tiny
    ((7, 1500), (5, 1024)),  # a sliver
])
@pytest.mark.parametrize("threshold", [0.0, 1.5])
@pytest.mark.parametrize("compiled", [False, True])
def test_threshold_masks_equal_thresholded_reference(original_size, input_size, threshold, compiled):
    low = smooth_logits(2, 3, seed=sum(original_size))
    expected = reference_logits(low, 1024, input_size, original_size)
    got = threshold_upsampled(low, 1024, input_size, original_size, threshold, kernels.load() if compiled else None)
    assert got.dtype == torch.bool and got.shape == expected.shape
    differ = got != (expected > threshold)
    # Only a pixel whose logit is within float rounding of the threshold may differ.
    assert (expected[differ] - threshold).abs().le(1e-5).all()
    assert differ.sum() <= 2


def test_noise_takes_the_dense_path_and_still_matches():
    g = torch.Generator().manual_seed(1)
    low = torch.randn(2, 2, 256, 256, generator=g)  # contours everywhere
    expected = reference_logits(low, 1024, (1024, 1024), (300, 300)) > 0
    for compiled in (None, kernels.load()):
        assert torch.equal(threshold_upsampled(low, 1024, (1024, 1024), (300, 300), 0.0, compiled), expected)


def test_constant_masks_and_empty_batch():
    assert threshold_upsampled(torch.full((1, 1, 256, 256), 3.0), 1024, (1024, 1024), (64, 80), 0.0).all()
    assert not threshold_upsampled(torch.full((1, 2, 256, 256), -3.0), 1024, (1024, 1024), (64, 80), 0.0).any()
    assert threshold_upsampled(torch.zeros(0, 3, 256, 256), 1024, (1024, 1024), (64, 80), 0.0).shape == (0, 3, 64, 80)


def test_windows_cover_every_weight():
    window = composed_window(256, 1024, 700, 333, torch.device("cpu"))
    assert window.span <= 3 and int(window.count.sum()) == 333
    assert torch.all(window.first[1:] >= window.first[:-1])

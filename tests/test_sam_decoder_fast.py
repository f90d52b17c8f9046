"""The wing's decoder evaluations (grounded/sam/cpu/decoder.py) on decoder shapes the path matrix
(test_sam_paths.py) does not reach, against segment_anything's `MaskDecoder` on the same weights:
transformer depths 1-3, few and many prompt tokens, more prompts than a chunk (the first prompt
alone, then chunks side by side), and SAM's own dimensions (256 channels, 8 heads, 64x64 tokens),
where the low-rank form's LayerNorm statistics come out of sums over 4096 tokens."""

import dataclasses

import pytest
import torch

from grounded.sam import build_sam, cpu
from grounded.testing import randomize_, tiny_sam_config
from reference import reference_sam


def decoder_pair(dim=32, depth=2, seed=0):
    config = dataclasses.replace(tiny_sam_config("vit"), prompt_embed_dim=dim, decoder_depth=depth,
                                 decoder_mlp_dim=2 * dim, iou_head_hidden_dim=dim)
    ours = randomize_(build_sam(config), seed).eval()
    return ours, reference_sam(config, ours.state_dict())


def inputs(dim, n, tokens, grid=16, mask_prompts=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, dim, grid, grid, generator=g)
    pe = torch.randn(1, dim, grid, grid, generator=g)
    sparse = torch.randn(n, tokens, dim, generator=g)
    if mask_prompts:
        dense = torch.randn(n, dim, grid, grid, generator=g)
    else:  # as the prompt encoder's no-mask embedding: one vector broadcast
        dense = torch.randn(1, dim, 1, 1, generator=g).expand(n, -1, grid, grid)
    return image, pe, sparse, dense


def assert_close(got, want):
    scale = want.abs().max()
    assert ((got - want).abs().max() / scale) <= 1e-4, float((got - want).abs().max() / scale)


@pytest.mark.parametrize("depth, tokens", [(1, 2), (3, 7), (3, 2)])
@pytest.mark.parametrize("mask_prompts", [False, True])
def test_decoder_depths_tokens_and_chunks(depth, tokens, mask_prompts):
    ours, ref = decoder_pair(depth=depth, seed=depth)
    args = inputs(32, 11, tokens, mask_prompts=mask_prompts)  # 11 prompts: the first, then chunks of 8 and 2
    for multimask in (True, False):
        with torch.no_grad():
            masks, iou = ours.mask_decoder(*args, multimask_output=multimask)
            want_masks, want_iou = ref.mask_decoder(*(t.contiguous() for t in args), multimask_output=multimask)
        assert cpu.paths_taken(ours)[0] == ("decoder/regrouped" if mask_prompts else "decoder/low_rank")
        assert masks.shape == want_masks.shape == (11, 3 if multimask else 1, 64, 64)
        assert_close(masks, want_masks)
        torch.testing.assert_close(iou, want_iou, rtol=0, atol=1e-5)


def test_sam_sized_decoder():
    ours, ref = decoder_pair(dim=256, seed=5)
    args = inputs(256, 5, 6, grid=64)
    with torch.no_grad():
        masks, iou = ours.mask_decoder(*args, multimask_output=True)
        want_masks, want_iou = ref.mask_decoder(*(t.contiguous() for t in args), multimask_output=True)
    assert cpu.paths_taken(ours)[0] == "decoder/low_rank"
    assert_close(masks, want_masks)
    torch.testing.assert_close(iou, want_iou, rtol=0, atol=1e-5)


def test_a_grid_that_leaves_a_partial_tile_of_rows():
    """20 token rows: tiles of 8 (compiled loops) or 16 (torch operations) leave a partial one."""
    ours, ref = decoder_pair(seed=6)
    args = inputs(32, 3, 4, grid=20)
    with torch.no_grad():
        want_masks, want_iou = ref.mask_decoder(*(t.contiguous() for t in args), multimask_output=True)
        for elementwise in ("kernels", "torch"):
            cpu.accelerate(ours, paths={"decoder/low_rank", f"upscaling/{elementwise}"})
            masks, iou = ours.mask_decoder(*args, multimask_output=True)
            assert cpu.paths_taken(ours) == ["decoder/low_rank", f"upscaling/{elementwise}"]
            assert masks.shape == (3, 3, 80, 80)
            assert_close(masks, want_masks)
            torch.testing.assert_close(iou, want_iou, rtol=0, atol=1e-5)

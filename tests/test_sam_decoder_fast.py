"""The mask decoder's inference evaluations against its reference structure (`predict_masks`, the
code segment_anything runs; tests/test_sam_parity.py ties that to segment_anything itself):
the low-rank one for prompts that share the image tokens (no mask prompt, low_rank_decoder.py) and
the regrouped one for per-prompt tokens (mask prompts, fast_decoder.py)."""

import pytest
import torch

from grounded.sam.mask_decoder import MaskDecoder
from grounded.sam.transformer import TwoWayTransformer
from grounded.testing import randomize_


def decoder(dim=32, depth=2, heads=8, seed=0):
    transformer = TwoWayTransformer(depth=depth, embedding_dim=dim, num_heads=heads, mlp_dim=2 * dim)
    return randomize_(MaskDecoder(transformer_dim=dim, transformer=transformer, iou_head_hidden_dim=dim), seed).eval()


def inputs(dim, n, tokens, grid=16, per_prompt_dense=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, dim, grid, grid, generator=g)
    pe = torch.randn(1, dim, grid, grid, generator=g)
    sparse = torch.randn(n, tokens, dim, generator=g)
    if per_prompt_dense:
        dense = torch.randn(n, dim, grid, grid, generator=g)
    else:
        dense = torch.randn(1, dim, 1, 1, generator=g).expand(n, -1, grid, grid)  # as the prompt encoder's no-mask embedding
    return image, pe, sparse, dense


def reference(dec, image, pe, sparse, dense, multimask):
    masks, iou = dec.predict_masks(image, pe, sparse, dense.contiguous())
    cut = slice(1, None) if multimask else slice(0, 1)
    return masks[:, cut], iou[:, cut]


def assert_close(got, want):
    scale = want.abs().max()
    assert ((got - want).abs().max() / scale) < 2e-5, float((got - want).abs().max() / scale)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("tokens", [2, 7])
def test_low_rank_evaluation_equals_reference(depth, multimask, tokens):
    dec = decoder(depth=depth, seed=depth)
    dec.prompt_chunk_size = 3  # 7 prompts: chunks of 3, 3, 1
    image, pe, sparse, dense = inputs(32, 7, tokens)
    with torch.no_grad():
        masks, iou = dec(image, pe, sparse, dense, multimask)
        want_masks, want_iou = reference(dec, image, pe, sparse, dense, multimask)
    assert masks.shape == want_masks.shape == (7, 3 if multimask else 1, 64, 64)
    assert_close(masks, want_masks)
    assert_close(iou, want_iou)


@pytest.mark.parametrize("case", ["sam_size", "per_prompt_tokens"])
def test_decoder_cases_equal_reference(case):
    """sam_size: SAM's own decoder dimensions (256 channels, 8 heads, 64x64 tokens), where the
    low-rank form's LayerNorm statistics come out of sums over 4096 tokens. per_prompt_tokens: a
    dense embedding per prompt (mask prompts) takes the regrouped evaluation."""
    if case == "sam_size":
        dec, (image, pe, sparse, dense) = decoder(dim=256, seed=5), inputs(256, 5, 6, grid=64)
    else:
        dec, (image, pe, sparse, dense) = decoder(seed=2), inputs(32, 5, 4, per_prompt_dense=True)
    with torch.no_grad():
        masks, iou = dec(image, pe, sparse, dense, True)
        want_masks, want_iou = reference(dec, image, pe, sparse, dense, True)
    assert_close(masks, want_masks)
    assert_close(iou, want_iou)


def test_bf16_autocast_keeps_the_mask_products_in_float32():
    dec = decoder(seed=3)
    image, pe, sparse, dense = inputs(32, 4, 3)
    with torch.no_grad():
        want_masks, _ = reference(dec, image, pe, sparse, dense, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masks, _ = dec(image, pe, sparse, dense, True)
    assert masks.dtype == torch.float32
    # bf16 transformer: close, not equal; the sign (the mask) agrees almost everywhere.
    assert ((masks > 0) == (want_masks > 0)).float().mean() > 0.97


def test_training_takes_the_reference_structure():
    dec = decoder(seed=4)
    image, pe, sparse, dense = inputs(32, 3, 3)
    masks, iou = dec(image, pe, sparse, dense, True)
    assert masks.requires_grad and iou.requires_grad
    masks.sum().backward()
    assert dec.transformer.layers[0].cross_attn_image_to_token.q_proj.weight.grad is not None


@pytest.mark.parametrize("fused", [True, False])
def test_upscaling_with_and_without_the_fused_gelu_product(fused, monkeypatch):
    """Without numba's loops (sam/cpu_kernels.py; tested against this path in test_sam_cpu_kernels.py):
    oneDNN's linear with a GELU epilogue (float32 inference on CPU) and the plain products give the
    reference's masks; a 20x20 grid leaves a partial tile of token rows."""
    from grounded.sam import fast_decoder

    monkeypatch.setattr(fast_decoder, "_upscaling_kernels", lambda *args: None)
    dec = decoder(seed=6)
    image, pe, sparse, dense = inputs(32, 3, 4, grid=20)
    if fused:
        if not torch.backends.mkldnn.is_available():
            pytest.skip("this torch build has no oneDNN")
        with torch.no_grad():
            assert fast_decoder._fused_linear_gelu(dec.output_upscaling[4], image) == "none"
    else:
        monkeypatch.setattr(fast_decoder, "_fused_linear_gelu", lambda act, like: None)
    with torch.no_grad():
        masks, iou = dec(image, pe, sparse, dense, True)
        want_masks, want_iou = reference(dec, image, pe, sparse, dense, True)
    assert masks.shape == (3, 3, 80, 80)
    assert_close(masks, want_masks)
    assert_close(iou, want_iou)

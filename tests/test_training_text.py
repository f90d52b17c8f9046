"""SAM's text prompt: the projection's contract (shapes, save/load, predict_from_text), the training
crops, text-prompt training through the trainer, and (slow) the end-to-end check that a projection
trained on CLIP image embeddings finds the shape a CLIP *text* embedding names."""

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor
from grounded.sam.text_prompt import TextPromptProjection, decode_with_tokens, predict_from_text
from grounded.sam.training.text import CLIP_MEAN_RGB, text_training_crop
from grounded.testing import tiny_sam


def test_projection_shapes_and_round_trip(tmp_path):
    proj = TextPromptProjection(24, 32, clip_model="tiny-shapes-clip")
    x = torch.randn(5, 24)
    out = proj(x)
    assert out.shape == (5, 1, 32)
    assert torch.allclose(proj(x * 7.0), out, atol=1e-6)  # embeddings are L2-normalised first
    proj.save_pretrained(tmp_path / "p")
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"text_prompt.safetensors", "text_prompt.json"}
    loaded = TextPromptProjection.from_pretrained(tmp_path / "p")
    assert loaded.config() == {"clip_dim": 24, "prompt_embed_dim": 32, "hidden_dim": 32, "clip_model": "tiny-shapes-clip"}
    assert torch.equal(loaded(x), out)
    with pytest.raises(ValueError, match=r"\[B, 24\].*tiny-shapes-clip"):
        proj(torch.randn(2, 16))
    with pytest.raises(FileNotFoundError, match="text_prompt.json"):
        TextPromptProjection.from_pretrained(tmp_path / "nothing")


def test_predict_from_text_is_the_decoder_with_the_text_token_after_the_points():
    sam = tiny_sam()
    predictor = SamPredictor(sam)
    image = np.random.default_rng(0).integers(0, 255, (100, 120, 3), np.uint8)
    predictor.set_image(image)
    proj = TextPromptProjection(16, 32)
    emb = torch.randn(16)
    masks, scores, low = predict_from_text(predictor, proj, emb)
    assert masks.shape == (3, 100, 120) and scores.shape == (3,) and low.shape == (3, 32, 32)

    with torch.no_grad():
        token = proj(emb[None])
        pe = sam.prompt_encoder
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *pe.image_embedding_size)
        ref_low, ref_iou = sam.mask_decoder(predictor.features, pe.get_dense_pe(), token, dense, True)
    assert np.allclose(low, ref_low[0].numpy(), atol=1e-5) and np.allclose(scores, ref_iou[0].numpy(), atol=1e-5)

    # with points: point tokens (with SAM's pad token, as for a plain point prompt) then the text token
    pts, labels = np.array([[[10.0, 20.0], [50.0, 60.0]]] * 2), np.array([[1, 0]] * 2)
    embs = torch.randn(2, 16)
    masks, scores, low = predict_from_text(predictor, proj, embs, point_coords=pts, point_labels=labels,
                                           multimask_output=False)
    assert masks.shape == (2, 1, 100, 120)
    with torch.no_grad():
        coords = torch.as_tensor(predictor.transform.apply_coords(pts, (100, 120)), dtype=torch.float)
        sparse, dense = sam.prompt_encoder(points=(coords, torch.as_tensor(labels)), boxes=None, masks=None)
        sparse = torch.cat([sparse, proj(embs)], dim=1)
        ref_low, ref_iou = sam.mask_decoder(predictor.features, pe.get_dense_pe(), sparse, dense, False)
    assert np.allclose(low, ref_low.numpy(), atol=1e-5) and np.allclose(scores, ref_iou.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="2 point prompts for 1 text embeddings"):
        predict_from_text(predictor, proj, embs[:1], point_coords=pts, point_labels=labels)


def test_decode_with_tokens_is_differentiable():
    sam = tiny_sam()
    proj = TextPromptProjection(8, 32)
    logits, iou = decode_with_tokens(sam, torch.randn(1, 32, 8, 8), proj(torch.randn(3, 8)))
    (logits.mean() + iou.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())


def test_text_training_crop_expands_squares_and_zeroes_outside_half_the_time():
    image = np.full((60, 80, 3), 200, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[20:30, 30:50] = True  # 20 wide, 10 high
    image[mask] = (255, 0, 0)
    rng = np.random.default_rng(0)
    zeroed, sides = 0, []
    for _ in range(200):
        crop = text_training_crop(image, mask, rng)
        assert crop.shape[0] == crop.shape[1]
        sides.append(crop.shape[0])
        assert ((crop == (255, 0, 0)).all(-1)).sum() == 200  # the whole object is inside
        zeroed += not (crop == 200).all(-1).any()
    assert 20 <= min(sides) and max(sides) <= 40 and np.std(sides) > 3
    assert 70 < zeroed < 130
    crop = text_training_crop(image, mask, rng, expand=(2.0, 2.0), zero_outside=1.0)
    assert crop.shape == (40, 40, 3) and (crop[0, 0] == CLIP_MEAN_RGB).all()


def test_text_prompt_training_through_the_trainer(tmp_path):
    from grounded.clip import load_clip
    from grounded.sam.training import TrainConfig, Trainer
    from grounded.sam.training.data import ArrayDataset, TrainItem
    from grounded.testing.clip import random_tiny_open_clip
    from grounded.testing.shapes import shapes_dataset

    clip = load_clip(str(random_tiny_open_clip(tmp_path / "clip")))
    scenes = shapes_dataset(2, size=64, seed=0, shapes_per_image=2)
    data = ArrayDataset([TrainItem(f"s{i}", s.image, s.masks) for i, s in enumerate(scenes)])
    kw = dict(out_dir=str(tmp_path / "run"), steps=2, lr=1e-3, progress=False, trainable=["mask_decoder.iou_prediction_head"],
              text_prompt=True, clip=str(tmp_path / "clip"), checkpoint_every=1)
    trainer = Trainer(TrainConfig(**kw), model=tiny_sam(), dataset=data, clip=clip)
    initial = {k: v.clone() for k, v in trainer.projection.state_dict().items()}
    history = trainer.train()
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert any(not torch.equal(initial[k], v) for k, v in trainer.projection.state_dict().items())
    trainer.save_model()
    loaded = TextPromptProjection.from_pretrained(tmp_path / "run" / "text_prompt")
    assert loaded.clip_model == str(tmp_path / "clip") and loaded.clip_dim == clip.embed_dim
    resumed = Trainer(TrainConfig(**kw), model=tiny_sam(), dataset=data, clip=clip)
    resumed.load_checkpoint()
    assert all(torch.equal(v, trainer.projection.state_dict()[k]) for k, v in resumed.projection.state_dict().items())
    with pytest.raises(ValueError, match="needs clip"):
        TrainConfig(text_prompt=True)


def found_rate(predictor, clip, projection_dir, scenes) -> float:
    """Fraction of (scene, caption) pairs where the native text mode's mask matches the named shape:
    IoU >= 0.5 with it and higher than with any other shape of the scene."""
    from grounded.text_to_mask import segment_text

    found = []
    for scene in scenes:
        for k, text in enumerate(scene.captions):
            dets = segment_text(scene.image, text, mode="native", sam=predictor, clip=clip, projection=str(projection_dir))
            mask = dets.mask[0]
            ious = [(mask & m).sum() / max(1, (mask | m).sum()) for m in scene.masks]
            found.append(int(np.argmax(ious)) == k and ious[k] >= 0.5)
    return float(np.mean(found))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 7.6 min on 2 threads of a lightly loaded 2-core machine, 14 min loaded
@pytest.mark.xfail(strict=True, reason="issue 9 open: the native text mode is not above chance yet (docstring); "
                   "an XPASS fails, so the day it passes the marker must go")
def test_native_text_mode_finds_the_named_shape_after_text_prompt_training(tmp_path_factory, mobile_sam_checkpoint):
    """A tiny CLIP trained contrastively on coloured shapes (its image and text halves agree), then
    the projection (and MobileSAM's decoder) trained on CLIP *image* embeddings of mask crops only;
    on held-out scenes of three shapes the CLIP *text* embedding of a caption must find its shape
    clearly more often than chance (1/3: one of the scene's three shapes): at least 0.6 of 24 prompts.

    NOT MET YET: this test fails. Measured with these settings: 0.42 of 24 held-out prompts in a
    script (previous session), 0.17 (4 of 24) in this test on 2 Dec 2026 (7.6 min); P(>= 10 of 24 |
    chance) = 0.25, so neither differs from chance. Training mIoU reaches 0.92 on the 12 scenes.

    What did not help (found rate of the top-scoring mask on 48 held-out prompts, 16 scenes; one
    thread; the trainer's recipe unless named; /tmp scripts on cached embeddings):
    - 100 training scenes, 600 steps, projection starting at the positive-point token: 0.23, yet
      0.73 of prompts have *some* output on the named shape: with three outputs and three shapes per
      scene the lowest-loss objective lets the outputs cover different shapes instead of choosing.
    - one output (multimask off) or the loss on all three outputs (point-token start), to force a
      choice: the masks collapse to empty (training mIoU 0.03-0.10 after 200-400 steps).
    - decoder lr 2e-4 or 5e-4 (projection 1e-3 to 2e-3): collapse to empty masks.
    - the same with dice loss only (no focal term, so no pull to empty): every output covers all
      the scene's shapes (training mIoU stuck at 0.33 from 150 to 300 steps; held-out 0.06).
    - 80 training scenes of six shapes (three outputs cannot cover them): random projection
      collapses; starting at the point token 0.27 at 200 steps, 0.15 at 400.
    - 12 scenes with the point-token start: 0.29 at 250 steps (training mIoU 0.89).
    The embeddings carry what is needed: a linear probe on MobileSAM's embedding pooled over a
    shape names its colour (0.94) and kind (1.0) on held-out scenes; the decoder does not learn to
    choose by them within this CPU budget (about 0.5-1 s per mask-step on one core)."""
    from grounded.clip import load_clip
    from grounded.sam import from_pretrained
    from grounded.sam.training import TrainConfig, Trainer
    from grounded.sam.training.data import ArrayDataset, TrainItem
    from grounded.testing.clip import tiny_trained_clip
    from grounded.testing.shapes import shapes_dataset

    torch.set_num_threads(2)
    folder = tiny_trained_clip(tmp_path_factory.getbasetemp() / "clip")
    clip = load_clip(str(folder))
    train = shapes_dataset(12, size=96, seed=1, shapes_per_image=3)
    held_out = shapes_dataset(8, size=96, seed=2, shapes_per_image=3)
    sam = from_pretrained(mobile_sam_checkpoint)
    out = tmp_path_factory.mktemp("text_run")
    config = TrainConfig(out_dir=str(out), steps=500, lr=1e-4, text_lr_scale=10.0, weight_decay=0.0,
                         warmup_steps=5, trainable=["mask_decoder"], text_prompt=True, clip=str(folder), max_masks=3,
                         checkpoint_every=10**6, progress=False)
    trainer = Trainer(config, model=sam, dataset=ArrayDataset([TrainItem(f"s{i}", s.image, s.masks)
                                                               for i, s in enumerate(train)]), clip=clip)
    trainer.train()
    trainer.save_model()
    predictor = SamPredictor(sam.eval(), cache_size=16)
    rate = found_rate(predictor, clip, out / "text_prompt", held_out)
    print(f"native text mode found the named shape in {rate:.2f} of {3 * len(held_out)} held-out prompts (chance 0.33)")
    # "Clearly more often than chance": 15 or more of 24 has probability 0.002 under chance (1/3).
    assert rate >= 0.6, f"found {rate:.2f} of {3 * len(held_out)} held-out prompts; chance is 0.33"

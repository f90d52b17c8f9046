"""SAM's text prompt: the projection's contract (shapes, save/load, predict_from_text), the training
crops, text-prompt training through the trainer, and (slow) the end-to-end check that a projection
trained on CLIP image embeddings finds the shape a CLIP *text* embedding names."""

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor
from grounded.sam.text_prompt import TextPromptProjection, decode_with_tokens, heat_peaks, predict_from_text
from grounded.sam.training.text import CLIP_MEAN_RGB, random_points_in, text_prompt_step, text_training_crop
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
    assert loaded.config() == {"clip_dim": 24, "prompt_embed_dim": 32, "hidden_dim": 32, "clip_model": "tiny-shapes-clip",
                               "locator": False}
    assert torch.equal(loaded(x), out)
    with pytest.raises(ValueError, match=r"\[B, 24\].*tiny-shapes-clip"):
        proj(torch.randn(2, 16))
    with pytest.raises(FileNotFoundError, match="text_prompt.json"):
        TextPromptProjection.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no locator"):
        proj.heat_map(x, torch.randn(1, 32, 4, 4))

    located = TextPromptProjection(24, 32, locator=True)
    located.save_pretrained(tmp_path / "l")
    again = TextPromptProjection.from_pretrained(tmp_path / "l")
    assert again.locator and again.config()["locator"] is True
    image = torch.randn(1, 32, 4, 4)
    assert torch.equal(again.heat_map(x, image), located.heat_map(x, image))


def test_locator_heat_map_is_the_query_against_channel_standardised_cells():
    torch.manual_seed(0)
    proj = TextPromptProjection(8, 16, locator=True)
    clip, image = torch.randn(3, 8), torch.randn(1, 16, 5, 6) * 4 + 2
    heat = proj.heat_map(clip, image)
    assert heat.shape == (3, 5, 6)
    query = proj.locator_query(torch.nn.functional.normalize(clip, dim=-1))
    for n in range(3):
        for y, x in [(0, 0), (4, 5), (2, 3)]:
            cell = image[0, :, y, x]
            cell = (cell - cell.mean()) / (cell.std() + 1e-5)
            assert heat[n, y, x].item() == pytest.approx((query[n] @ cell + proj.locator_bias).item(), rel=1e-4, abs=1e-5)


def test_heat_peaks_smooth_and_skip_the_padding():
    heat = torch.zeros(2, 8, 8)
    heat[0, 1, 6] = 5.0  # one hot cell ...
    heat[0, 4:7, 1:4] = 2.0  # ... loses to a 3 x 3 blob after the box filter (5/9 < 2)
    heat[1, 1:4, 1:4] = 1.0
    heat[1, 7, 7] = 9.0  # over the padding when the image is 64 (of 128) wide (corner: 9/4 after the filter)
    peaks = heat_peaks(heat, 128)
    assert peaks[0].tolist() == [2.5 * 16, 5.5 * 16]
    assert peaks[1].tolist() == [7.5 * 16, 7.5 * 16]
    assert heat_peaks(heat, 128, input_size=(128, 64))[1].tolist() == [2.5 * 16, 2.5 * 16]


def test_predict_from_text_with_a_locator_adds_its_peak_as_a_positive_point():
    sam = tiny_sam()
    predictor = SamPredictor(sam)
    image = np.random.default_rng(1).integers(0, 255, (100, 120, 3), np.uint8)
    predictor.set_image(image)
    torch.manual_seed(0)
    proj = TextPromptProjection(16, 32, locator=True)
    embs = torch.randn(2, 16)
    pts, labels = np.array([[[10.0, 20.0]]] * 2), np.array([[0]] * 2)
    masks, scores, low = predict_from_text(predictor, proj, embs, point_coords=pts, point_labels=labels)
    assert masks.shape == (2, 3, 100, 120)
    with torch.no_grad():
        peak = heat_peaks(proj.heat_map(embs, predictor.features), 128, tuple(predictor.input_size))
        coords = torch.as_tensor(predictor.transform.apply_coords(pts, (100, 120)), dtype=torch.float)
        coords = torch.cat([peak[:, None], coords], 1)
        point_labels = torch.tensor([[1, 0]] * 2)
        sparse, dense = sam.prompt_encoder(points=(coords, point_labels), boxes=None, masks=None)
        sparse = torch.cat([sparse, proj(embs)], dim=1)
        ref_low, ref_iou = sam.mask_decoder(predictor.features, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    assert np.allclose(low, ref_low.numpy(), atol=1e-5) and np.allclose(scores, ref_iou.numpy(), atol=1e-5)
    # the peak lies on the resized image (100 x 120 -> 107 x 128), not on the padding below it
    assert (peak[:, 1] < 107).all()


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


def test_training_points_fall_inside_their_masks_and_the_locator_loss_is_added():
    targets = torch.zeros(2, 32, 32)
    targets[0, 3:6, 20:30] = 1
    targets[1, 25, 7] = 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = random_points_in(targets, 128, rng)
        assert points.shape == (2, 1, 2)
        cells = (points[:, 0] / 4).floor().long()  # 128-pixel frame, 32 cells
        assert targets[0, cells[0, 1], cells[0, 0]] == 1 and targets[1, cells[1, 1], cells[1, 0]] == 1

    from grounded.testing.clip import random_tiny_open_clip
    from grounded.clip import load_clip
    from grounded.sam.training.losses import locator_loss, sam_loss
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        clip = load_clip(str(random_tiny_open_clip(folder)))
    sam = tiny_sam()
    image = np.full((128, 128, 3), 90, np.uint8)
    masks = np.zeros((2, 128, 128), bool)
    masks[0, 10:30, 80:120] = masks[1, 90:120, 20:40] = True
    embedding = torch.randn(1, 32, 8, 8)
    for locator in (False, True):
        torch.manual_seed(0)
        proj = TextPromptProjection(clip.embed_dim, 32, locator=locator)
        out = text_prompt_step(sam, proj, clip, image, masks, embedding, targets, np.random.default_rng(3),
                               locator_weight=2.0)
        # the same draws again, to rebuild the parts by hand
        rng = np.random.default_rng(3)
        crops = [text_training_crop(image, m, rng) for m in masks]
        with torch.no_grad():
            emb = clip.encode_images(crops).float()
        points = None
        if locator:
            p = random_points_in(targets, 128, rng)
            points = (p, torch.ones(2, 1, dtype=torch.int))
        logits, iou = decode_with_tokens(sam, embedding, proj(emb), points)
        plain = sam_loss(logits, iou, targets)
        extra = 2.0 * locator_loss(proj.heat_map(emb, embedding), targets) if locator else 0.0
        assert out.loss.item() == pytest.approx((plain.loss + extra).item(), rel=1e-5)
        assert out.mask_loss.item() == pytest.approx(plain.mask_loss.item(), rel=1e-5)


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
    assert loaded.clip_model == str(tmp_path / "clip") and loaded.clip_dim == clip.embed_dim and loaded.locator
    # the locator trains at its own lr scale (one layer from scratch), the token at text_lr_scale
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lrs[id(trainer.projection.locator_query.weight)] == pytest.approx(1e-3 * 30)
    assert lrs[id(trainer.projection.mlp[0].weight)] == pytest.approx(1e-3)
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
@pytest.mark.timeout(3600)  # 10.3 min on one thread of a 2-core machine shared with a benchmark
def test_native_text_mode_finds_the_named_shape_after_text_prompt_training(tmp_path_factory, mobile_sam_checkpoint, request):
    """A tiny CLIP trained contrastively on coloured shapes (its image and text halves agree), then
    the projection (its token and its locator) and MobileSAM's decoder trained on CLIP *image*
    embeddings of mask crops only; on held-out scenes of three shapes the CLIP *text* embedding of a
    caption must find its shape clearly more often than chance (1/3: one of the scene's three
    shapes): at least 0.6 of 24 prompts.

    Measured (2 Dec 2026, one thread): 0.75 of these 24 prompts in this test (10.3 min); 0.75 of 48
    (16 held-out scenes) with the same recipe through Trainer and segment_text in a script.

    The locator is what makes it work. Without it (the SAM paper's token alone) this test's recipe
    found 0.17 and 0.42 of the 24; found rate of the top-scoring mask on 48 held-out prompts, /tmp
    scripts on cached embeddings, 100 training scenes unless named, 0.06-0.31 in every variant:
    - 600 steps, projection starting at the positive-point token: 0.23, yet 0.73 of prompts have
      *some* output on the named shape: with three outputs and three shapes per scene the
      lowest-loss objective lets the outputs cover different shapes instead of choosing.
    - plus a ranking loss (cross-entropy of the predicted IoUs, temperature 0.1, against the output
      of highest true IoU, weight 1): 0.21 at 600 steps; the IoU head picks the best output on
      *training* prompts 0.39 of the time (chance 0.33): it has nothing to rank by.
    - the locator's heat map fed as SAM's dense mask prompt instead of a point (decoder trained on
      it, 400 steps): 0.31, while the map alone picked the named shape 0.63.
    - one output (multimask off), or the loss on all three outputs: the masks collapse to empty;
      decoder lr 2e-4 or 5e-4: collapse; dice loss only: every output covers all the shapes
      (held-out 0.06); 80 scenes of six shapes: 0.15-0.27; 12 scenes: 0.29.
    The locator alone (500 steps, lr 3e-3, its peak as a point to the *pretrained* decoder):
    0.73 / 0.79 / 0.85 of 48 prompts with 12 / 48 / 100 training scenes; CLIP's caption picks the
    right crop of the three in 1.0 of them, so what limits the rate is the locator's peak."""
    from grounded.clip import load_clip
    from grounded.sam import from_pretrained
    from grounded.sam.training import TrainConfig, Trainer
    from grounded.sam.training.data import ArrayDataset, TrainItem
    from grounded.testing.clip import tiny_trained_clip
    from grounded.testing.shapes import shapes_dataset

    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))
    torch.set_num_threads(1)
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

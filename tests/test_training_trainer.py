"""The SAM trainer on tiny models: it learns synthetic shapes, resumes exactly, caches embeddings,
schedules the lr; the datasets, the YAML config and `grounded train`."""

import json

import numpy as np
import pytest
import torch

from grounded.sam import SamPredictor, build_sam, from_pretrained, save_pretrained
from grounded.sam.training import TrainConfig, Trainer
from grounded.sam.training.data import (
    ArrayDataset, CocoDataset, LabelPngDataset, Sa1bDataset, TrainItem, build_dataset,
)
from grounded.sam.training.trainer import layer_scale, low_res_targets, lr_factor
from grounded.testing import tiny_sam_config


def shapes_dataset(n: int, seed: int, size=(96, 128), shapes: int = 3) -> ArrayDataset:
    """Images with coloured discs and squares on a dark background, and their masks."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    items = []
    for k in range(n):
        image = np.full((h, w, 3), 30, np.uint8)
        masks = []
        for j in range(shapes):
            cy, cx, r = rng.integers(25, h - 25), rng.integers(25, w - 25), rng.integers(14, 26)
            m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if j % 2 == 0 else ((abs(yy - cy) < r) & (abs(xx - cx) < r))
            for prev in masks:
                prev &= ~m  # later shapes occlude earlier ones
            image[m] = rng.integers(100, 255, 3)
            masks.append(m)
        items.append(TrainItem(f"shapes{seed}_{k}", image, np.stack(masks)))
    return ArrayDataset(items)


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam(tiny_sam_config()).eval()


def point_miou(model, dataset) -> float:
    """Top-scoring multimask output for one point at each shape's most interior pixel."""
    from scipy import ndimage

    predictor = SamPredictor(model)
    ious = []
    for item in dataset.items:
        predictor.set_image(item.image)
        pts = []
        for m in item.masks:
            d = ndimage.distance_transform_edt(m)
            y, x = np.unravel_index(np.argmax(d), d.shape)
            pts.append((x, y))
        masks, scores, _ = predictor.predict_many(point_coords=np.array(pts, float)[:, None], point_labels=np.ones((len(pts), 1)))
        for mask_set, score, truth in zip(masks, scores, item.masks):
            top = mask_set[int(np.argmax(score))]
            ious.append((top & truth).sum() / (top | truth).sum())
    return float(np.mean(ious))


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), steps=4, lr=3e-3, weight_decay=0.0, progress=False,
                trainable=["mask_decoder", "prompt_encoder"], checkpoint_every=1000,
                interactive=dict(point_rounds=1, no_point_rounds=1))
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_raises_the_miou_on_synthetic_shapes(tmp_path):
    """One shape per image (a tiny random model learns that in seconds; several shapes per image
    take it thousands of steps): the point mIoU on held-out images must rise well above chance."""
    import dataclasses

    torch.set_num_threads(1)
    train, held_out = shapes_dataset(8, 0, size=(96, 96), shapes=1), shapes_dataset(4, 100, size=(96, 96), shapes=1)
    torch.manual_seed(0)
    model = build_sam(dataclasses.replace(tiny_sam_config(), prompt_embed_dim=64, decoder_num_heads=4,
                                          iou_head_hidden_dim=64, mask_in_chans=16)).eval()
    before = point_miou(model, held_out)
    trainer = Trainer(config(tmp_path, steps=40, warmup_steps=5, interactive=dict(point_rounds=1, no_point_rounds=1)),
                      model=model, dataset=train)
    history = trainer.train()
    after = point_miou(model.eval(), held_out)
    first = np.mean([h["loss"] for h in history[:8]])
    last = np.mean([h["loss"] for h in history[-8:]])
    print(f"loss {first:.3f} -> {last:.3f}; held-out point mIoU {before:.3f} -> {after:.3f}")
    assert last < 0.5 * first
    assert before < 0.3 and after > before + 0.4
    assert np.mean([h["miou"] for h in history[-8:]]) > np.mean([h["miou"] for h in history[:8]]) + 0.3


def test_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    data = shapes_dataset(3, 1)
    kw = dict(steps=6, grad_accum=2, max_masks=2, warmup_steps=2, decay_steps=[4], decay_factor=0.5,
              interactive=dict(point_rounds=2, no_point_rounds=1, box_prob=0.5))
    straight = Trainer(config(tmp_path / "a", **kw), model=tiny_model(), dataset=data)
    straight.train()

    first = Trainer(config(tmp_path / "b", **kw), model=tiny_model(), dataset=data)
    first.train(steps=3)
    path = first.save_checkpoint()
    torch.manual_seed(1234)  # disturb the global RNG: resume must restore it
    np.random.seed(99)
    resumed = Trainer(config(tmp_path / "b", **kw), model=tiny_model(), dataset=data)
    assert resumed.load_checkpoint() == path and resumed.step == 3
    resumed.train()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    initial = tiny_model().state_dict()
    changed = [k for k in a if not torch.equal(a[k], initial[k])]
    assert changed, "training changed nothing"
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    # the checkpoint is plain tensors and containers
    state = torch.load(path, weights_only=True)
    assert state["step"] == 3 and not any(k.startswith("image_encoder.") for k in state["model"])


def test_embeddings_are_cached_on_disk_and_reused(tmp_path):
    data = shapes_dataset(2, 2)
    calls = []
    model = tiny_model()
    forward = model.image_encoder.forward
    model.image_encoder.forward = lambda x: calls.append(1) or forward(x)
    cfg = config(tmp_path, steps=4, trainable=["mask_decoder"], interactive=dict(point_rounds=0, no_point_rounds=0))
    Trainer(cfg, model=model, dataset=data).train()
    assert len(calls) == 2  # once per image, though 4 steps ran
    assert len(list((tmp_path / "run" / "embeddings").glob("*.pt"))) == 2
    Trainer(cfg, model=model, dataset=data).train()  # a new trainer (a new run) reads them from disk
    assert len(calls) == 2


def test_lr_schedule_and_layer_decay(tmp_path):
    assert [lr_factor(s, 4, [6, 8], 0.1) for s in range(10)] == pytest.approx(
        [0.25, 0.5, 0.75, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    model = tiny_model()  # ViT with 2 blocks
    assert layer_scale("image_encoder.blocks.1.attn.qkv.weight", model, 0.5) == 0.5
    assert layer_scale("image_encoder.blocks.0.attn.qkv.weight", model, 0.5) == 0.25
    assert layer_scale("image_encoder.patch_embed.proj.weight", model, 0.5) == 0.125
    assert layer_scale("image_encoder.neck.0.weight", model, 0.5) == 1.0
    assert layer_scale("mask_decoder.iou_token.weight", model, 0.5) == 1.0
    tiny_vit = build_sam(tiny_sam_config("tiny_vit"))  # TinyViT: blocks counted across its 4 stages
    scales = [layer_scale(n, tiny_vit, 0.5) for n in (
        "image_encoder.patch_embed.seq.0.c.weight", "image_encoder.layers.0.blocks.0.conv1.c.weight",
        "image_encoder.layers.1.blocks.0.attn.qkv.weight", "image_encoder.layers.3.blocks.0.mlp.fc1.weight",
        "image_encoder.neck.0.weight")]
    assert scales == [0.03125, 0.0625, 0.125, 0.5, 1.0]
    # two rounds: each back-propagates into the encoder's output, which goes through the encoder once
    # (before, the second round's backward crashed on the encoder's freed graph)
    cfg = config(tmp_path, steps=1, lr=1e-3, layer_decay=0.5, freeze_image_encoder=False,
                 trainable=["image_encoder", "mask_decoder"], interactive=dict(point_rounds=1, no_point_rounds=0))
    trainer = Trainer(cfg, model=model, dataset=shapes_dataset(1, 3))
    lrs = sorted(g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])
    before = model.image_encoder.blocks[0].attn.qkv.weight.clone()
    trainer.train()
    assert not torch.equal(before, model.image_encoder.blocks[0].attn.qkv.weight)  # the encoder trained


def test_a_step_without_masks_skips_the_optimizer_but_keeps_the_schedule(tmp_path):
    import warnings

    empty = TrainItem("empty", np.full((64, 80, 3), 30, np.uint8), np.zeros((0, 64, 80), bool))
    model = tiny_model()
    trainer = Trainer(config(tmp_path, steps=2, warmup_steps=4), model=model, dataset=ArrayDataset([empty]))
    before = model.mask_decoder.iou_token.weight.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()" included
        first = trainer.train_step()
    assert np.isnan(first["loss"]) and torch.equal(before, model.mask_decoder.iou_token.weight)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 * 2 / 4)  # the schedule moved on
    trainer.dataset = shapes_dataset(1, 5)
    assert np.isfinite(trainer.train_step()["loss"])
    assert not torch.equal(before, model.mask_decoder.iou_token.weight)


@pytest.mark.parametrize("trainable", [["mask_decoder"], ["mask_decoder.output_hypernetworks_mlps",
                                                         "mask_decoder.iou_prediction_head"]],
                         ids=["decoder", "heads-only"])
def test_bf16_autocast_trains_the_full_eleven_rounds(tmp_path, trainable):
    """The README's config with precision bf16: the paper's 11 rounds (8 with a new point from the
    error region, 2 without, all after the first fed the previous logits back). Before the fix the
    second round crashed sampling its point from bf16 logits through numpy."""
    from grounded.sam import cpu

    cfg = config(tmp_path, steps=2, precision="bf16", trainable=trainable,
                 interactive=dict(point_rounds=8, no_point_rounds=2))
    model = tiny_model()
    trainer = Trainer(cfg, model=model, dataset=shapes_dataset(1, 4))
    cpu.paths_taken(model)
    history = trainer.train()
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    taken = cpu.paths_taken(model)
    assert taken.count("decoder/reference") == 2 * 11 * trainer.config.grad_accum  # under autocast: the core decoder


def test_low_res_targets_follow_the_model_preprocessing():
    masks = np.zeros((1, 64, 128), bool)
    masks[0, 8:24, 32:64] = True
    # long side 128 -> 1024 (x8), low res 256 is x2 of the original: rows 16..48, cols 64..128
    t = low_res_targets(masks, (512, 1024), 1024, 256)
    assert t.shape == (1, 256, 256)
    assert t[0, 16:48, 64:128].all() and t.sum() == 32 * 64


def _png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def test_datasets_coco_rle_and_polygons_label_pngs_and_sa1b(tmp_path):
    from grounded.rle import compress_rle, encode_rle

    image = np.zeros((20, 30, 3), np.uint8)
    _png(tmp_path / "a.png", image)
    square = np.zeros((20, 30), bool)
    square[2:8, 3:12] = True
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "segmentation": compress_rle(encode_rle(square)), "iscrowd": 0},
            {"id": 2, "image_id": 1, "segmentation": encode_rle(square), "iscrowd": 0},
            {"id": 3, "image_id": 1, "segmentation": [[15, 10, 25, 10, 25, 18, 15, 18]], "iscrowd": 0},
            {"id": 4, "image_id": 1, "segmentation": compress_rle(encode_rle(~square)), "iscrowd": 1},
        ],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    item = CocoDataset(tmp_path / "train.json")[0]
    assert item.masks.shape == (3, 20, 30)
    assert np.array_equal(item.masks[0], square) and np.array_equal(item.masks[1], square)
    assert item.masks[2, 10:19, 15:26].all() and item.masks[2].sum() == 9 * 11

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    _png(tmp_path / "images" / "x.png", image)
    labels = np.zeros((20, 30), np.uint16)
    labels[square] = 300
    labels[15:18, 20:25] = 7
    _png(tmp_path / "labels" / "x.png", labels)
    ds = build_dataset({"type": "label_pngs", "images": "images", "labels": "labels"}, tmp_path)
    assert isinstance(ds, LabelPngDataset) and len(ds) == 1
    masks = ds[0].masks
    assert masks.shape == (2, 20, 30) and np.array_equal(masks[1], square) and masks[0].sum() == 15

    sa = tmp_path / "sa"
    sa.mkdir()
    _png(sa / "sa_1.png", image)
    (sa / "sa_1.json").write_text(json.dumps({"image": {"file_name": "sa_1.png", "height": 20, "width": 30},
                                               "annotations": [{"segmentation": compress_rle(encode_rle(square))}]}))
    item = Sa1bDataset(sa)[0]
    assert np.array_equal(item.masks[0], square)

    with pytest.raises(ValueError, match="not one of"):
        build_dataset({"type": "voc"})
    with pytest.raises(ValueError, match="unknown keys"):
        build_dataset({"type": "sa1b", "folder": "sa", "extra": 1}, tmp_path)
    with pytest.raises(FileNotFoundError):
        CocoDataset(tmp_path / "missing.json")


def test_config_from_yaml_checks_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 5\ninteractive: {point_rounds: 3}\nout_dir: out\n")
    cfg = TrainConfig.from_yaml(tmp_path / "c.yaml", {"interactive.box_prob": 0.0, "lr": 0.01})
    assert cfg.steps == 5 and cfg.interactive.point_rounds == 3 and cfg.interactive.box_prob == 0.0 and cfg.lr == 0.01
    assert cfg.path(cfg.out_dir) == tmp_path / "out"
    (tmp_path / "bad.yaml").write_text("stepz: 5\n")
    with pytest.raises(ValueError, match="stepz"):
        TrainConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text("interactive: {rounds: 3}\n")
    with pytest.raises(ValueError, match="rounds"):
        TrainConfig.from_yaml(tmp_path / "bad2.yaml")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="int8")


def test_grounded_train_cli_trains_and_resumes(tmp_path, capsys):
    from grounded.cli import main

    save_pretrained(tiny_model(), tmp_path / "tiny")
    data = shapes_dataset(2, 5)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k, item in enumerate(data.items):
        _png(tmp_path / "images" / f"{k}.png", item.image)
        labels = np.zeros(item.image.shape[:2], np.uint8)
        for i, m in enumerate(item.masks):
            labels[m] = i + 1
        _png(tmp_path / "labels" / f"{k}.png", labels)
    (tmp_path / "train.yaml").write_text(
        "model: tiny\nout_dir: run\nsteps: 2\ncheckpoint_every: 1\nprogress: false\nmax_masks: 2\n"
        "data:\n  - {type: label_pngs, images: images, labels: labels}\n"
        "interactive: {point_rounds: 1, no_point_rounds: 1}\n")
    assert main(["train", str(tmp_path / "train.yaml")]) == 0
    assert "trained to step 2" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "train.yaml")]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "train.yaml"), "--resume", "--set", "steps=3"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step_0000002.pt" in out and "trained to step 3" in out
    model = from_pretrained(tmp_path / "run" / "final")
    assert not torch.equal(model.mask_decoder.iou_token.weight, tiny_model().mask_decoder.iou_token.weight)

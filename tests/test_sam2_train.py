"""SAM 2.1 in the trainer (`grounded train`, grounded.sam.training) on a tiny random SAM 2.1 model: it
learns a memorised shape with the encoder frozen, its object-score loss against a hand computation
and sam2's own training loss, the saved model loads back with grounded.sam2 and gives the trained
masks (predictor and `grounded eval`), the CLI end to end, every grad mode, refusals; and
SAM2ImagePredictor under bf16 / fp16 autocast against the official sam2 under the same autocast."""

import json

import numpy as np
import pytest
import torch

from grounded.sam.training import TrainConfig, Trainer, sam_loss
from grounded.sam.training.losses import dice_loss, sigmoid_focal_loss
from grounded.sam.training.trainer import layer_scale
from grounded.sam2 import SAM2ImagePredictor, Sam2Config, build_sam2, from_pretrained, save_pretrained
from sam2_reference import TINY_HIERA, official_model, save_official
from test_training_trainer import _png, shapes_dataset

# The tiny Hiera of the parity tests with a narrow decoder on a 256-pixel input: a training step in
# a fraction of a second on a CPU.
TINY_TRAIN = Sam2Config(**TINY_HIERA, image_size=256, d_model=64, decoder_mlp_dim=256, decoder_num_heads=4,
                        iou_head_hidden_dim=64)


def tiny_sam2(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam2(TINY_TRAIN)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), steps=4, lr=3e-3, weight_decay=0.0, progress=False,
                checkpoint_every=1000, interactive=dict(point_rounds=1, no_point_rounds=1))
    base.update(kw)
    return TrainConfig(**base)


def box_iou(model, item) -> float:
    """The single-mask output for each mask's box, IoU with the mask, averaged."""
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(item.image)
    ious = []
    for truth in item.masks:
        ys, xs = np.nonzero(truth)
        mask, _, _ = predictor.predict(box=np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]),
                                       multimask_output=False)
        ious.append((mask[0] & truth).sum() / (mask[0] | truth).sum())
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SAM 2.1 trained on one image with one shape (memorised): the trainer, its untrained
    copy and the image. The defaults train: trainable [mask_decoder] (SAM 1's name), encoder frozen."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("sam2_train")
    data = shapes_dataset(1, 0, size=(96, 96), shapes=1)
    trainer = Trainer(config(tmp, steps=12, interactive=dict(point_rounds=1, no_point_rounds=1, box_prob=0.5)),
                      model=tiny_sam2(), dataset=data)
    trainer.train()
    return trainer, tiny_sam2().eval(), data.items[0]


def test_training_lowers_the_loss_trains_the_decoder_and_leaves_the_encoder_frozen(trained):
    trainer, untrained, item = trained
    losses = [h["loss"] for h in trainer.history]
    print("losses", [round(x, 3) for x in losses])
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    after, before = trainer.model.state_dict(), untrained.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert all(k.startswith("sam_mask_decoder.") for k in changed)
    for part in ("conv_s0", "conv_s1", "pred_obj_score_head", "obj_score_token", "output_hypernetworks_mlps",
                 "iou_prediction_head", "transformer"):  # the high-res projections and the object-score head train
        assert any(k.startswith(f"sam_mask_decoder.{part}") for k in changed), part
    assert not any(k.startswith(("image_encoder.", "sam_prompt_encoder.", "no_mem_embed")) for k in changed)
    assert box_iou(trainer.model.eval(), item) > box_iou(untrained, item) + 0.3


def test_object_score_loss_is_the_cross_entropy_of_target_non_empty():
    """By hand: two prompts, the second's target empty; object scores 2 and -1."""
    torch.manual_seed(0)
    logits, iou_pred = torch.randn(2, 3, 8, 8), torch.rand(2, 3)
    targets = torch.zeros(2, 8, 8)
    targets[0, 2:5, 3:7] = 1
    scores = torch.tensor([[2.0], [-1.0]])
    out = sam_loss(logits, iou_pred, targets, object_score_logits=scores)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    want_object = (-np.log(sigmoid(2.0)) - np.log(1 - sigmoid(-1.0))) / 2  # present, absent
    assert float(out.object_score_loss) == pytest.approx(want_object, rel=1e-6)
    # the absent object's masks and IoUs are not supervised: the first prompt's losses, over 2 prompts
    per_output = 20 * sigmoid_focal_loss(logits[0], targets[0].expand(3, 8, 8)) + dice_loss(logits[0], targets[0])
    assert float(out.mask_loss) == pytest.approx(float(per_output.min()) / 2, rel=1e-6)
    truth = targets[0] > 0
    ious = torch.stack([((m > 0) & truth).sum() / ((m > 0) | truth).sum() for m in logits[0]])
    assert float(out.iou_loss) == pytest.approx(float(((iou_pred[0] - ious) ** 2).mean()) / 2, rel=1e-6)
    assert float(out.loss) == pytest.approx(float(out.mask_loss + out.iou_loss) + want_object, rel=1e-6)
    # SAM 1 (no head): unchanged, every prompt supervised
    plain = sam_loss(logits, iou_pred, targets)
    assert plain.object_score_loss is None and float(plain.mask_loss) > float(out.mask_loss)


def test_the_loss_equals_sam2_s_own_training_loss():
    """sam2's training/loss_fns.py (installed with sam2 1.1.0) with the SAM 2.1 training config's
    weights (20, 1, 1, 1), the object score's focal loss with gamma 0 and no alpha, all IoUs
    supervised; its IoU loss taken as mean-squared, as grounded's (the config says L1)."""
    import sys
    import types

    if "training.trainer" not in sys.modules:  # loss_fns imports one constant from sam2's trainer (hydra, iopath, ...)
        sys.modules["training.trainer"] = types.SimpleNamespace(CORE_LOSS_KEY="core_loss")
    from training.loss_fns import MultiStepMultiMasksAndIous

    torch.manual_seed(1)
    targets = (torch.rand(3, 16, 16) > 0.6).float()
    targets[2] = 0  # an absent object
    reference = MultiStepMultiMasksAndIous({"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
                                           supervise_all_iou=True, iou_use_l1_loss=False, pred_obj_scores=True,
                                           focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0)
    for outputs in (3, 1):
        logits, iou_pred, scores = torch.randn(3, outputs, 16, 16), torch.rand(3, outputs), torch.randn(3, 1)
        want = reference([{"multistep_pred_multimasks_high_res": [logits], "multistep_pred_ious": [iou_pred],
                           "multistep_object_score_logits": [scores]}], targets[None])
        got = sam_loss(logits, iou_pred, targets, object_score_logits=scores)
        assert float(got.loss) == pytest.approx(float(want["core_loss"]), rel=1e-5)
        assert float(got.object_score_loss) == pytest.approx(float(want["loss_class"]), rel=1e-5)


def test_the_saved_model_loads_with_grounded_sam2_and_gives_the_trained_masks(trained, tmp_path):
    trainer, untrained, item = trained
    folder = trainer.save_model(tmp_path / "final")
    loaded = from_pretrained(folder)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    prompts = dict(point_coords=np.array([[48, 48], [10, 10]]), point_labels=np.array([1, 0]))
    results = []
    for model in (trainer.model.eval(), loaded, untrained):
        predictor = SAM2ImagePredictor(model)
        predictor.set_image(item.image)
        results.append(predictor.predict(**prompts))
    (masks, scores, _), (loaded_masks, loaded_scores, _), (untrained_masks, _, _) = results
    np.testing.assert_array_equal(loaded_masks, masks)
    np.testing.assert_allclose(loaded_scores, scores, rtol=0, atol=1e-6)
    assert (masks != untrained_masks).mean() > 0.05  # the trained model's masks, not the untrained
    # the step checkpoint resumes a new trainer at the same weights
    path = trainer.save_checkpoint(tmp_path / "step.pt")
    resumed = Trainer(config(tmp_path, steps=12), model=tiny_sam2(), dataset=trainer.dataset)
    resumed.load_checkpoint(path)
    assert resumed.step == 12
    assert torch.equal(resumed.model.sam_mask_decoder.pred_obj_score_head.layers[0].weight,
                       trainer.model.sam_mask_decoder.pred_obj_score_head.layers[0].weight)


def test_grounded_train_cli_on_a_sam2_folder_then_grounded_eval(tmp_path, capsys):
    from grounded.cli import main

    save_pretrained(tiny_sam2(), tmp_path / "tiny_sam2")
    data = shapes_dataset(1, 5, size=(96, 96), shapes=1)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k, item in enumerate(data.items):
        _png(tmp_path / "images" / f"{k}.png", item.image)
        _png(tmp_path / "labels" / f"{k}.png", item.masks[0].astype(np.uint8))
    (tmp_path / "train.yaml").write_text(
        "model: tiny_sam2\nout_dir: run\nsteps: 8\ncheckpoint_every: 4\nprogress: false\nlr: 3.0e-3\n"
        "weight_decay: 0\ndata:\n  - {type: label_pngs, images: images, labels: labels}\n"
        "interactive: {point_rounds: 1, no_point_rounds: 0, box_prob: 1.0}\n")
    torch.set_num_threads(1)
    assert main(["train", str(tmp_path / "train.yaml"), "--set", "steps=4"]) == 0
    assert main(["train", str(tmp_path / "train.yaml"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "trained to step 8" in out
    assert "grounded.sam2.from_pretrained" in out
    final = tmp_path / "run" / "final"
    assert isinstance(from_pretrained(final), type(tiny_sam2()))
    # grounded eval takes the trained folder: its boxes mIoU beats the untrained model's
    assert main(["eval", "boxes", "--data", str(tmp_path), "--model", str(final), "--compare",
                 str(tmp_path / "tiny_sam2"), "--bootstrap", "0", "--out", str(tmp_path / "eval")]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]["boxes"]["results"]
    miou = {label: r["metrics"]["mIoU"]["value"] for label, r in results.items()}
    print("eval boxes mIoU", miou)
    trained_miou = next(v for k, v in miou.items() if "final" in k)
    untrained_miou = next(v for k, v in miou.items() if "tiny_sam2" in k)
    assert trained_miou > untrained_miou + 0.2


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_training_under_no_grad_and_inference_mode(tmp_path, mode):
    """The trainer loads config.model, trains (bf16 autocast here), checkpoints and resumes inside
    either mode; a model made under inference_mode is refused, naming why."""
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    folder = save_pretrained(tiny_sam2(), tmp_path / "tiny_sam2")
    data = shapes_dataset(1, 6, size=(64, 64), shapes=1)
    cfg = config(tmp_path, model=str(folder), steps=1, precision="bf16", max_masks=1)
    with context():
        trainer = Trainer(cfg, dataset=data)
        history = trainer.train()
        trainer.save_checkpoint()
        resumed = Trainer(cfg, dataset=data)
        resumed.load_checkpoint()
        resumed.train(steps=2)
    assert np.isfinite(history[0]["loss"]) and resumed.step == 2
    assert not torch.equal(from_pretrained(folder).sam_mask_decoder.iou_token.weight,
                           trainer.model.sam_mask_decoder.iou_token.weight)
    if mode == "inference_mode":
        with torch.inference_mode():
            model = tiny_sam2()
        with pytest.raises(ValueError, match=r"made under torch.inference_mode\(\) and cannot train"):
            Trainer(cfg, model=model, dataset=data)


def test_a_training_hiera_encoder_with_layer_decay(tmp_path):
    """freeze_image_encoder false: the encoder runs once per image and each round's gradient reaches
    it; the Hiera's blocks get layer-wise lr scales (patch embedding 0, blocks 1..L, neck L + 1)."""
    model = tiny_sam2()
    depth = len(model.image_encoder.trunk.blocks)
    assert layer_scale("image_encoder.trunk.blocks.4.attn.qkv.weight", model, 0.5) == 0.5 ** (depth - 4)
    assert layer_scale("image_encoder.trunk.patch_embed.proj.weight", model, 0.5) == 0.5 ** (depth + 1)
    assert layer_scale("image_encoder.neck.convs.0.conv.weight", model, 0.5) == 1.0
    assert layer_scale("sam_mask_decoder.iou_token.weight", model, 0.5) == 1.0
    cfg = config(tmp_path, steps=1, layer_decay=0.5, freeze_image_encoder=False, max_masks=1,
                 trainable=["image_encoder", "mask_decoder", "no_mem_embed"],
                 interactive=dict(point_rounds=1, no_point_rounds=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(cfg, model=model, dataset=shapes_dataset(1, 7, size=(64, 64), shapes=1)).train()
    for name in ("image_encoder.trunk.blocks.0.attn.qkv.weight", "image_encoder.trunk.patch_embed.proj.weight",
                 "image_encoder.neck.convs.3.conv.weight", "no_mem_embed"):
        assert not torch.equal(before[name], model.state_dict()[name]), name


def test_the_embedding_cache_holds_sam2_levels_on_disk_and_a_bounded_number_in_memory(tmp_path):
    from grounded.sam.training.trainer import EmbeddingCache

    model = tiny_sam2()
    images = [item.image for item in shapes_dataset(3, 9, size=(64, 64), shapes=1).items]
    calls = []

    def encoder(image):
        def encode():
            calls.append(1)
            return model.image_encoder(model.preprocess_image(image)[None])
        return encode

    levels = model.image_encoder(model.preprocess_image(images[0])[None])
    one_image = sum(t.numel() * t.element_size() for t in levels)
    cache = EmbeddingCache(tmp_path / "cache", model, memory_bytes=2 * one_image)
    first = [cache.get(image, encoder(image)) for image in images]
    assert len(calls) == 3 and len(cache.memory) == 2  # the oldest left memory ...
    again = cache.get(images[0], encoder(images[0]))
    assert len(calls) == 3  # ... and came back from disk
    assert isinstance(again, list) and all(torch.equal(a, b) for a, b in zip(again, first[0]))
    assert [t.shape for t in again] == [t.shape for t in levels]


def test_sam1_options_that_do_not_fit_sam2_are_refused(tmp_path):
    data = shapes_dataset(1, 8, size=(64, 64), shapes=1)
    with pytest.raises(ValueError, match="trainable names \\['image_encoder.blocks'\\] match no parameter of the "
                                         "SAM 2 model.*sam_mask_decoder"):
        Trainer(config(tmp_path, freeze_image_encoder=False, trainable=["image_encoder.blocks"]),
                model=tiny_sam2(), dataset=data)
    with pytest.raises(ValueError, match="text_prompt: true trains a projection for SAM 1.*the model is SAM 2"):
        Trainer(config(tmp_path, text_prompt=True, clip="ViT-B-32"), model=tiny_sam2(), dataset=data)


# ---------------------------------------------------------------------------- reduced precision

# The parity tests' tiny Hiera on a 256-pixel input (the official config's image_size overridden): a
# float16 matmul on a CPU is slow, and a 1024-pixel encoder would take most of a minute.
AUTOCAST_CONFIG = Sam2Config(**TINY_HIERA, image_size=256)


@pytest.fixture(scope="module")
def official_and_ours(tmp_path_factory):
    reference = official_model(trunk=TINY_HIERA, overrides=["++model.image_size=256"])
    path = save_official(reference, tmp_path_factory.mktemp("sam2_bf16") / "tiny_sam2.1.pt")
    yield reference, path
    path.unlink()


PROMPTS = [dict(point_coords=np.array([[100, 120]]), point_labels=np.array([1])),
           dict(point_coords=np.array([[100, 120], [300, 200]]), point_labels=np.array([1, 0]), multimask_output=False),
           dict(box=np.array([50, 60, 300, 250])),
           dict(box=np.array([50, 60, 300, 250]), point_coords=np.array([[200, 150]]), point_labels=np.array([0]),
                multimask_output=False)]


def official_predictor(reference):
    from sam2.sam2_image_predictor import SAM2ImagePredictor as Official

    official = Official(reference)
    official._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]  # (its feature sizes are the 1024 input's, written in)
    return official


def mask_ious(a, b):
    inter, union = (a & b).sum((-1, -2)), (a | b).sum((-1, -2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_predictor_under_autocast_is_as_close_as_the_official_under_the_same_autocast(official_and_ours, dtype):
    """The official sam2 and grounded, each under torch.autocast("cpu", dtype) on the same weights,
    against the official float32 masks: grounded's mean mask IoU within 0.01 of the official's own,
    and ours against the official's autocast masks at 0.9 or more on average."""
    reference, path = official_and_ours
    ours = from_pretrained(path, config=AUTOCAST_CONFIG)
    image = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    assert ours.image_size == reference.image_size == 256
    official_fp32, official_low, grounded = official_predictor(reference), official_predictor(reference), \
        SAM2ImagePredictor(ours)
    official_fp32.set_image(image)
    with torch.autocast("cpu", dtype=dtype):
        official_low.set_image(image)
        grounded.set_image(image)
    ours_vs_fp32, official_vs_fp32, ours_vs_official = [], [], []
    for prompt in PROMPTS:
        want = official_fp32.predict(**prompt)[0] > 0
        with torch.autocast("cpu", dtype=dtype):
            theirs = official_low.predict(**prompt)[0] > 0
            mine, scores, low_res = grounded.predict(**prompt)
        assert mine.dtype == bool and scores.dtype == np.float32 and low_res.dtype == np.float32
        ours_vs_fp32.append(mask_ious(mine, want))
        official_vs_fp32.append(mask_ious(theirs, want))
        ours_vs_official.append(mask_ious(mine, theirs))
    ours_vs_fp32, official_vs_fp32, ours_vs_official = map(np.concatenate, (ours_vs_fp32, official_vs_fp32,
                                                                            ours_vs_official))
    print(f"{dtype}: mask IoU with the official fp32: ours {ours_vs_fp32.mean():.4f} (min {ours_vs_fp32.min():.4f}), "
          f"the official's own {official_vs_fp32.mean():.4f} (min {official_vs_fp32.min():.4f}); ours with the "
          f"official's {dtype} masks {ours_vs_official.mean():.4f} (min {ours_vs_official.min():.4f})")
    assert ours_vs_fp32.mean() >= official_vs_fp32.mean() - 0.01
    assert ours_vs_official.mean() >= 0.9


def test_bf16_weights_and_the_autocast_argument(official_and_ours):
    """from_pretrained(dtype=torch.bfloat16) runs (weights in bf16), and autocast_dtype=bf16 on float32
    weights; both masks close to float32's."""
    reference, path = official_and_ours
    image = np.random.default_rng(1).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    prompt = dict(box=np.array([40, 30, 180, 160]))
    official = official_predictor(reference)
    official.set_image(image)
    want = official.predict(**prompt)[0] > 0
    bf16_model = from_pretrained(path, config=AUTOCAST_CONFIG, dtype=torch.bfloat16)
    assert bf16_model.dtype == torch.bfloat16 and bf16_model.image_encoder.trunk.patch_embed.proj.weight.dtype == torch.bfloat16
    fp32_model = from_pretrained(path, config=AUTOCAST_CONFIG)
    for predictor in (SAM2ImagePredictor(bf16_model), SAM2ImagePredictor(fp32_model, autocast_dtype=torch.bfloat16)):
        predictor.set_image(image)
        masks, scores, low_res = predictor.predict(**prompt)
        assert masks.shape == want.shape and np.isfinite(scores).all() and low_res.dtype == np.float32
        assert mask_ious(masks, want).mean() > 0.8, mask_ious(masks, want)

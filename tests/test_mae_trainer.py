"""MAE pre-training on tiny models: exact resume, refused resumes, gradient accumulation, bf16
autocast, the held-out baseline, the reconstruction figure, and `grounded pretrain`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.mae.config import PretrainConfig
from grounded.mae.data import denormalise
from grounded.mae.trainer import Pretrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = {"image_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_embed_dim": 16,
        "decoder_depth": 1, "decoder_num_heads": 2}


def smooth_images(folder, n=6, size=(40, 48), seed=0):
    """Low-frequency colour patterns: a patch is predictable from its neighbours."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]] / 8.0
    for k in range(n):
        channels = [np.sin(xx * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)) * np.cos(yy * rng.uniform(0.5, 1.5))
                    for _ in range(3)]
        Image.fromarray(((np.stack(channels, -1) + 1) * 127).astype(np.uint8)).save(folder / f"s{k}.png")
    return folder


def config(tmp_path, out="run", **kw) -> PretrainConfig:
    base = dict(model=dict(TINY), data=[str(smooth_images(tmp_path / "imgs"))], out_dir=str(tmp_path / out),
                steps=4, batch_size=4, grad_accum=2, lr=1e-3, warmup_steps=1, checkpoint_every=1, figure_every=0,
                progress=False)
    base.update(kw)
    return PretrainConfig(**base)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_n_steps_equal_half_then_resume_then_half(tmp_path):
    whole = Pretrainer(config(tmp_path, "whole"))
    whole.train()
    first = Pretrainer(config(tmp_path, "split"))
    first.train(until=2)
    assert first.step == 2 and first.latest_checkpoint().name == "step_0000002.pt"
    torch.manual_seed(99)  # a fresh process: other global RNG state, restored from the checkpoint
    resumed = Pretrainer(config(tmp_path, "split"))
    resumed.load_checkpoint()
    resumed.train()
    a, b = weights(whole), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in whole.history] == [r["loss"] for r in resumed.history]
    opt_a, opt_b = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    from grounded.mae import read_mae_weights

    saved = read_mae_weights(resumed.latest_checkpoint())  # a training checkpoint is an MAE source too
    assert saved.has_decoder and saved.config == resumed.model.config
    assert all(torch.equal(saved.state_dict[k], b[k]) for k in b)
    lines = (tmp_path / "split" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_resume_from_a_different_config_or_other_images_is_refused(tmp_path):
    Pretrainer(config(tmp_path)).train(until=1)
    other = Pretrainer(config(tmp_path, mask_ratio=0.5, lr=2e-3))
    with pytest.raises(ValueError, match=r"another config.*mask_ratio: 0.75 there, 0.5 now; lr: 0.001 there, 0.002 now"):
        other.load_checkpoint()
    smooth_images(tmp_path / "imgs", n=7)  # one image more
    with pytest.raises(ValueError, match="the inputs changed since the checkpoint"):
        Pretrainer(config(tmp_path)).load_checkpoint()


def test_gradient_accumulation_averages_the_micro_batches(tmp_path):
    trainer = Pretrainer(config(tmp_path, steps=1, batch_size=2, grad_accum=3))
    start = weights(trainer)
    captured = {}
    trainer.optimizer.step = lambda: captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()
                                                      if p.grad is not None})
    trainer.train_step()
    # the same three micro-batches (same seeds), each on its own
    trainer.model.load_state_dict(start)
    expected = {n: torch.zeros_like(g) for n, g in captured.items()}
    for micro in range(3):
        rng = np.random.default_rng([0, 0, micro])
        masks = torch.Generator().manual_seed(int(rng.integers(2**62)))
        images = trainer.data.batch([trainer.sample_index(micro * 2 + k) for k in range(2)], rng)
        trainer.model.zero_grad()
        out = trainer.model(images, 0.75, generator=masks)
        trainer.model.loss(images, out.pred, out.mask, True).backward()
        for n, p in trainer.model.named_parameters():
            if n in expected:
                expected[n] += p.grad / 3
    assert all(torch.allclose(captured[n], expected[n], atol=1e-6, rtol=1e-5) for n in expected)


def test_bf16_autocast_gives_the_fp32_loss_and_gradient_direction(tmp_path):
    fp32 = Pretrainer(config(tmp_path, "a", steps=1, grad_accum=1))
    bf16 = Pretrainer(config(tmp_path, "b", steps=1, grad_accum=1, precision="bf16"))
    bf16.model.load_state_dict(fp32.model.state_dict())
    grads = []
    for trainer in (fp32, bf16):
        trainer.optimizer.step = lambda: None
        record = trainer.train_step()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
        assert trainer.model.blocks[0].attn.qkv.weight.dtype == torch.float32
    assert abs(fp32.history[0]["loss"] - record["loss"]) < 0.02 * fp32.history[0]["loss"]
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


def test_training_lowers_the_loss_below_the_per_patch_mean(tmp_path):
    """Two images, whole (no crop, no flip): in 100 steps the tiny MAE learns them well enough that
    the masked patches' loss falls clearly below the baseline of predicting each masked patch's own
    mean (about 1.0). Held-out images need more than a unit test's budget: bench/pretrain_mae.py."""
    two = smooth_images(tmp_path / "two", n=2, seed=3)
    trainer = Pretrainer(config(tmp_path, data=[str(two)], val_data=[str(two)], steps=100, grad_accum=1, batch_size=8,
                                lr=3e-3, warmup_steps=5, checkpoint_every=1000, crop_scale=[1, 1], crop_ratio=[1, 1],
                                hflip=False))
    before = trainer.evaluate(trainer.val_data)
    history = trainer.train()
    after = history[-1]
    assert 0.98 < before["val_baseline"] <= 1.0 and after["val_baseline"] == pytest.approx(before["val_baseline"])
    assert before["val_loss"] > before["val_baseline"]  # a random decoder predicts worse than the mean
    assert before["val_channel_baseline"] < before["val_baseline"]  # colour alone explains part of the variance
    assert after["val_loss"] < 0.85 * after["val_baseline"], (before, after)
    assert np.mean([r["loss"] for r in history[-10:]]) < 0.85 * np.mean([r["loss"] for r in history[:10]])


def test_reconstruction_figure_shows_masked_input_reconstruction_and_original(tmp_path):
    trainer = Pretrainer(config(tmp_path, figure_images=2))
    path = trainer.write_figure()
    figure = np.asarray(Image.open(path))
    size, gap, header = 64, 4, 18  # 32-pixel crops shown twice as large
    assert figure.shape == (header + 2 * (size + gap) + gap, 3 * size + 4 * gap, 3)
    originals = trainer.figure_images()
    for row in range(2):
        top = header + row * (size + gap)
        tiles = [figure[top:top + size, gap + k * (size + gap):gap + k * (size + gap) + size] for k in range(3)]
        original = denormalise(originals[row]).repeat(2, 0).repeat(2, 1)
        assert np.array_equal(tiles[2], original)
        masked = (tiles[0].reshape(4, 16, 4, 16, 3) != original.reshape(4, 16, 4, 16, 3)).any(axis=(1, 3, 4))
        assert masked.sum() == 12  # 75% of 16 patches greyed out
        visible = ~masked
        pasted = tiles[1].reshape(4, 16, 4, 16, 3).transpose(0, 2, 1, 3, 4)[visible]
        assert np.array_equal(pasted, original.reshape(4, 16, 4, 16, 3).transpose(0, 2, 1, 3, 4)[visible])


def test_cli_pretrain_resumes_a_killed_run_and_refuses_to_overwrite(tmp_path, capsys):
    from grounded.cli import main

    smooth_images(tmp_path / "imgs")
    spec = dict(model=TINY, data=["imgs/"], steps=4, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                figure_every=2, progress=False)
    (tmp_path / "mae.yaml").write_text(json.dumps({**spec, "out_dir": "whole"}))
    (tmp_path / "killed.yaml").write_text(json.dumps({**spec, "out_dir": "killed"}))
    assert main(["pretrain", str(tmp_path / "mae.yaml")]) == 0
    assert "trained to step 4" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "whole" / "figures").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    Pretrainer(PretrainConfig.from_yaml(tmp_path / "killed.yaml")).train(until=2)  # as if killed after step 2
    assert main(["pretrain", str(tmp_path / "killed.yaml")]) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "killed.yaml"), "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "final" / "model.safetensors"), load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["pretrain", str(tmp_path / "mae.yaml"), "--set", "mask_ratio=1.0"]) == 1
    assert "mask_ratio must lie strictly between 0 and 1" in capsys.readouterr().err


def test_shipped_config_runs_on_the_repository_samples(tmp_path, capsys):
    from pathlib import Path

    from grounded.cli import main

    shipped = Path(__file__).resolve().parents[1] / "configs" / "mae_pretrain.yaml"
    assert main(["pretrain", str(shipped), "--set", f"out_dir={tmp_path}/run", "--set", "steps=1",
                 "--set", "batch_size=2", "--set", "model.depth=1", "--set", "progress=false"]) == 0
    out = capsys.readouterr().out
    assert "3 images" in out and "trained to step 1" in out
    assert (tmp_path / "run" / "final" / "mae_config.json").is_file()


def test_init_from_an_encoder_checkpoint_keeps_its_encoder_and_refuses_another_width(tmp_path):
    from grounded.mae import MAECheckpointError, MAEConfig, MaskedAutoencoder, save_mae

    torch.manual_seed(3)
    donor = MaskedAutoencoder(MAEConfig(**TINY))
    save_mae(donor, tmp_path / "donor")
    trainer = Pretrainer(config(tmp_path, init=str(tmp_path / "donor")))
    assert torch.equal(trainer.model.blocks[1].mlp.fc2.weight, donor.blocks[1].mlp.fc2.weight)
    assert torch.equal(trainer.model.decoder_pred.weight, donor.decoder_pred.weight)
    with pytest.raises(MAECheckpointError, match="encoder of width 32.*the model is 48"):
        Pretrainer(config(tmp_path, init=str(tmp_path / "donor"), model={**TINY, "embed_dim": 48}))


@pytest.mark.parametrize("mode", [torch.enable_grad, torch.no_grad, torch.inference_mode])
def test_pretrainer_trains_resumes_and_evaluates_under_every_grad_mode(tmp_path, mode):
    """Built, trained, resumed, evaluated and drawn inside the caller's grad mode: the same weights as
    in grad mode, and a model that trains afterwards."""
    reference = Pretrainer(config(tmp_path, "reference", steps=2))
    reference.train()
    with mode():
        Pretrainer(config(tmp_path, "run", steps=2)).train(until=1)
        resumed = Pretrainer(config(tmp_path, "run", steps=2))
        resumed.load_checkpoint()
        resumed.train()
        held_out = resumed.evaluate(resumed.data, crops=1)
        figure = resumed.write_figure(tmp_path / "figure.png")
    assert resumed.step == 2 and figure.is_file() and np.isfinite(held_out["val_loss"])
    assert all(torch.equal(a, b) for a, b in zip(weights(resumed).values(), weights(reference).values()))
    resumed.train_step()
    assert all(torch.isfinite(p.grad).all() for p in resumed.model.parameters() if p.requires_grad)


def test_cli_names_a_folder_without_images_and_a_checkpoint_of_another_architecture(tmp_path, capsys):
    """The issue's bad inputs through `grounded pretrain`: exit status 1 and the reason on stderr."""
    from grounded.cli import main
    from grounded.sam import build_sam
    from grounded.testing import tiny_sam_config

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures")
    spec = dict(model=TINY, data=["empty/"], steps=1, batch_size=2, progress=False, out_dir="run")
    (tmp_path / "empty.yaml").write_text(json.dumps(spec))
    assert main(["pretrain", str(tmp_path / "empty.yaml")]) == 1
    assert "no image files in" in capsys.readouterr().err
    torch.save(build_sam(tiny_sam_config()).state_dict(), tmp_path / "sam.pth")
    smooth_images(tmp_path / "imgs")
    (tmp_path / "init.yaml").write_text(json.dumps({**spec, "data": ["imgs/"], "init": "sam.pth"}))
    assert main(["pretrain", str(tmp_path / "init.yaml")]) == 1
    assert "is not an MAE or ViT encoder: it looks like SAM (segment-anything ViT" in capsys.readouterr().err
    assert main(["pretrain", "--to-sam", str(tmp_path / "sam.pth"), "--out", str(tmp_path / "out")]) == 1
    assert "it looks like SAM (segment-anything ViT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_preset_name_takes_dotted_overrides(tmp_path):
    (tmp_path / "mae.yaml").write_text("model: vit_tiny\ndata: [imgs/]\n")
    config = PretrainConfig.from_yaml(tmp_path / "mae.yaml", {"model.depth": 1, "steps": 3})
    assert config.model == {"preset": "vit_tiny", "depth": 1} and config.steps == 3
    assert (config.mae_config().embed_dim, config.mae_config().depth) == (192, 1)
    assert config.base_dir == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="pre-training config .*missing.yaml does not exist"):
        PretrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_the_schedule_warms_up_linearly_then_falls_by_a_half_cosine(tmp_path):
    trainer = Pretrainer(config(tmp_path, steps=12, warmup_steps=4, lr=1e-3, min_lr=1e-5))
    lrs = [trainer.lr_at(step) for step in range(13)]
    np.testing.assert_allclose(lrs[:4], [2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and lrs[12] == pytest.approx(1e-5)
    assert lrs[8] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # half-way down the cosine
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))
    trainer.train(until=3)  # the optimiser ran each step at that step's rate
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[2])
    assert config(tmp_path, "default", steps=100, warmup_steps=None).warmup == 5  # 5% of the steps by default

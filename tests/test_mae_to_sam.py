"""MAE / ViT encoders into SAM's image encoder: the pseudo-inverse patch resize and the position
interpolation against timm's, the blocks against timm's ViT, the official .pth, transformers and
grounded layouts, checkpoints of other architectures, and the path into `grounded train`."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grounded.mae import MAECheckpointError, MAEConfig, MaskedAutoencoder, read_mae_weights, save_mae
from grounded.mae.load import MAEWeights
from grounded.mae.to_sam import (
    default_global_blocks, interpolate_pos_embed, mae_to_sam, mae_to_sam_encoder, resample_patch_embed,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = dict(image_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
             decoder_num_heads=2)


def small_mae(seed=0, **kw) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    model = MaskedAutoencoder(MAEConfig(**{**SMALL, **kw}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def tiny_donor(prompt_dim=32):
    from grounded.sam import build_sam
    from grounded.testing import tiny_sam_config

    torch.manual_seed(1)
    return build_sam(tiny_sam_config())


def test_pseudo_inverse_resize_is_timms_and_keeps_each_patch_embedding():
    from timm.layers import resample_patch_embed as timm_resample

    torch.manual_seed(0)
    weight = torch.randn(6, 3, 14, 14)
    ours = resample_patch_embed(weight, 16)
    assert ours.shape == (6, 3, 16, 16)
    assert torch.allclose(ours, timm_resample(weight, [16, 16]), atol=1e-4, rtol=1e-4)
    # a 14-pixel patch, upsampled to 16 by the same resize, meets the new kernel as it met the old
    patches = torch.randn(5, 3, 14, 14, dtype=torch.float64)
    upsampled = F.interpolate(patches, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    w64 = weight.double()
    assert torch.allclose(F.conv2d(patches, w64), F.conv2d(upsampled, resample_patch_embed(w64, 16)), atol=1e-9)
    assert torch.equal(resample_patch_embed(weight[..., :2, :2], 2), weight[..., :2, :2])


def test_position_embedding_is_timms_bicubic_resample_without_the_cls_token():
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 14 * 14, 24)
    expected = resample_abs_pos_embed(pos, [64, 64], num_prefix_tokens=1, interpolation="bicubic", antialias=False)
    ours = interpolate_pos_embed(pos, 64)
    assert ours.shape == (1, 64, 64, 24)
    assert torch.allclose(ours, expected[:, 1:].reshape(1, 64, 64, 24), atol=1e-6)
    assert torch.equal(interpolate_pos_embed(pos, 14), pos[:, 1:].reshape(1, 14, 14, 24))


def test_global_blocks_are_the_last_of_each_quarter_as_sam():
    assert default_global_blocks(12) == (2, 5, 8, 11)
    assert default_global_blocks(24) == (5, 11, 17, 23)
    assert default_global_blocks(32) == (7, 15, 23, 31)
    assert default_global_blocks(6) == (0, 2, 3, 5)
    assert default_global_blocks(4) == (0, 1, 2, 3)


def test_converted_blocks_compute_what_the_vit_computes():
    """A timm ViT without a cls token, converted at its own grid with global attention everywhere and
    zero relative positions: SAM's encoder reaches the ViT's tokens before its final norm."""
    import timm

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, num_classes=0, class_token=False,
        global_pool="avg").eval()
    with torch.no_grad():
        vit.pos_embed.normal_(std=0.5)
    sd = vit.state_dict()
    weights = MAEWeights(sd, MAEConfig(image_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2), False, "timm")
    encoder = mae_to_sam_encoder(weights, image_size=64, window_size=0).eval()
    tokens = {}
    encoder.blocks[-1].register_forward_hook(lambda m, i, o: tokens.update(out=o))
    images = torch.randn(2, 3, 64, 64)
    for mode in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with mode():
            encoder(images)
            expected = vit.blocks(vit.patch_embed(images) + vit.pos_embed)
        assert (tokens["out"].reshape(2, 16, 32) - expected).abs().max() < 1e-5
    assert all(not b.attn.rel_pos_h.any() and b.attn.rel_pos_h.shape == (7, 16) for b in encoder.blocks)


def test_official_pth_layout_converts_windowed_with_interpolated_positions(tmp_path):
    """mae_pretrain_vit_*.pth: {"model": encoder weights} in models_mae.py's names (no decoder)."""
    mae = small_mae()
    encoder_only = {k: v for k, v in mae.state_dict().items() if not k.startswith(("decoder_", "mask_token"))}
    torch.save({"model": encoder_only}, tmp_path / "mae_pretrain_vit_small.pth")
    weights = read_mae_weights(tmp_path / "mae_pretrain_vit_small.pth", num_heads=2)
    assert not weights.has_decoder and weights.config.depth == 4 and weights.config.image_size == 32
    encoder = mae_to_sam_encoder(weights, image_size=128, window_size=3, global_blocks=(1, 3))
    sd = encoder.state_dict()
    assert torch.equal(sd["blocks.3.mlp.lin2.weight"], mae.blocks[3].mlp.fc2.weight)
    assert torch.equal(sd["blocks.0.attn.qkv.bias"], mae.blocks[0].attn.qkv.bias)
    assert torch.allclose(sd["pos_embed"], interpolate_pos_embed(mae.pos_embed, 8))
    assert sd["patch_embed.proj.weight"].shape == (32, 3, 16, 16)
    assert [b.window_size for b in encoder.blocks] == [3, 0, 3, 0]
    assert sd["blocks.0.attn.rel_pos_h"].shape == (5, 16) and sd["blocks.1.attn.rel_pos_h"].shape == (15, 16)
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 128, 128)).shape == (1, 256, 8, 8)
    state = torch.get_rng_state()
    with torch.inference_mode():  # built under inference_mode, still trainable; the caller's RNG untouched
        again = mae_to_sam_encoder(weights, image_size=128, window_size=3, global_blocks=(1, 3))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), sd.values()))  # the neck from the seed
    again(torch.randn(1, 3, 128, 128)).sum().backward()
    assert again.blocks[0].attn.qkv.weight.grad is not None


def test_vit_huge_layout_with_14_pixel_patches_is_resampled_to_16(tmp_path):
    mae = small_mae(patch_size=14, image_size=56)
    torch.save({"model": mae.state_dict()}, tmp_path / "mae_visualize_vit_huge.pth")
    weights = read_mae_weights(tmp_path / "mae_visualize_vit_huge.pth", num_heads=2)
    assert weights.has_decoder and weights.config.patch_size == 14 and weights.config.decoder_num_heads == 1
    encoder = mae_to_sam_encoder(weights, image_size=64, window_size=2)
    assert torch.equal(encoder.patch_embed.proj.weight, resample_patch_embed(mae.patch_embed.proj.weight, 16))
    assert encoder.pos_embed.shape == (1, 4, 4, 32)


def test_transformers_folder_converts_as_its_official_layout(tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    hf = ViTMAEForPreTraining(ViTMAEConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64))
    hf.save_pretrained(tmp_path / "vit-mae")
    from_folder = mae_to_sam_encoder(tmp_path / "vit-mae", image_size=64, window_size=2).state_dict()
    official = read_mae_weights(tmp_path / "vit-mae")
    assert torch.equal(official.state_dict["blocks.1.attn.qkv.weight"][64:],
                       hf.vit.layers[1].attention.v_proj.weight)
    assert torch.equal(from_folder["blocks.1.mlp.lin1.weight"], hf.vit.layers[1].mlp.fc1.weight)
    assert torch.equal(from_folder["blocks.0.norm2.bias"], hf.vit.layers[0].layernorm_after.bias)


def test_checkpoints_of_other_architectures_are_named(tmp_path):
    import timm
    import torchvision

    from grounded.sam import build_sam, save_pretrained
    from grounded.testing import tiny_sam_config

    cases = {
        "sam.pth": (build_sam(tiny_sam_config()).state_dict(), r"SAM \(segment-anything ViT"),
        "mobile_sam.pt": (build_sam(tiny_sam_config("tiny_vit")).state_dict(), "MobileSAM"),
        "resnet18.pth": (torchvision.models.resnet18().state_dict(), "a ResNet"),
        "swin.pth": (timm.models.swin_transformer.SwinTransformer(
            img_size=32, patch_size=4, window_size=4, embed_dim=8, depths=(1,), num_heads=(1,)).state_dict(),
            "a Swin Transformer"),
        "other.pth": ({"foo.weight": torch.zeros(2)}, r"no architecture grounded knows .*'foo.weight'"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / name)
        with pytest.raises(MAECheckpointError, match=f"is not an MAE or ViT encoder: it looks like {message}"):
            read_mae_weights(tmp_path / name)
    save_pretrained(build_sam(tiny_sam_config()), tmp_path / "sam_folder")
    with pytest.raises(MAECheckpointError, match="neither mae_config.json"):
        read_mae_weights(tmp_path / "sam_folder")
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=16)).save_pretrained(tmp_path / "clip")
    with pytest.raises(MAECheckpointError, match="transformers 'clip_vision_model' model .*not ViTMAE or ViT"):
        read_mae_weights(tmp_path / "clip")
    torch.save({"model": {"x": 1}}, tmp_path / "empty.pth")
    with pytest.raises(MAECheckpointError, match="holds no tensors"):
        read_mae_weights(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="could not find MAE weights for 'nowhere/at-all'"):
        read_mae_weights("nowhere/at-all")
    with pytest.raises(ValueError, match=r"global attention blocks \[9\] do not exist in a 4-block encoder"):
        mae_to_sam_encoder(MAEWeights(small_mae().state_dict(), MAEConfig(**SMALL), True, "m"), global_blocks=[9])


def test_whole_sam_from_mae_loads_predicts_and_fine_tunes_its_encoder(tmp_path):
    """The path into SAM: converted, saved, loaded by from_pretrained, fine-tuned by grounded.sam's
    trainer with the image encoder training (its weights move)."""
    from grounded.cli import main
    from grounded.sam import SamPredictor, from_pretrained, save_pretrained
    from grounded.sam.training import TrainConfig, Trainer
    from grounded.sam.training.data import ArrayDataset, TrainItem

    save_mae(small_mae(), tmp_path / "mae")
    save_pretrained(tiny_donor(), tmp_path / "donor")
    assert main(["pretrain", "--to-sam", str(tmp_path / "mae"), "--out", str(tmp_path / "sam"), "--decoder-from",
                 str(tmp_path / "donor"), "--image-size", "64", "--window-size", "2", "--global-blocks", "3"]) == 0
    sam = from_pretrained(tmp_path / "sam")
    donor = from_pretrained(tmp_path / "donor")
    assert sam.image_encoder.img_size == 64 and [b.window_size for b in sam.image_encoder.blocks] == [2, 2, 2, 0]
    assert torch.equal(sam.mask_decoder.iou_token.weight, donor.mask_decoder.iou_token.weight)
    assert torch.equal(sam.image_encoder.blocks[2].attn.proj.weight, mae_to_sam(tmp_path / "mae", donor, 64, 2, [3])
                       .image_encoder.blocks[2].attn.proj.weight)
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:30, 20:40] = 200
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[30, 20]]), point_labels=np.array([1]))
    assert masks.shape == (3, 48, 64)
    truth = np.zeros((1, 48, 64), bool)
    truth[0, 10:30, 20:40] = True
    before = sam.image_encoder.blocks[0].attn.qkv.weight.detach().clone()
    config = TrainConfig(out_dir=str(tmp_path / "train"), steps=2, lr=1e-3, progress=False, freeze_image_encoder=False,
                         trainable=["image_encoder", "mask_decoder"], checkpoint_every=1000,
                         interactive=dict(point_rounds=0, no_point_rounds=0))
    Trainer(config, model=sam, dataset=ArrayDataset([TrainItem("box", image, truth)])).train()
    assert not torch.equal(sam.image_encoder.blocks[0].attn.qkv.weight, before)
    # the encoder with the decoder's output heads only: the frozen decoder trunk still passes the gradient on
    before = sam.image_encoder.blocks[0].attn.qkv.weight.detach().clone()
    heads_only = dataclasses.replace(config, out_dir=str(tmp_path / "heads"), trainable=[
        "image_encoder", "mask_decoder.output_hypernetworks_mlps", "mask_decoder.iou_prediction_head"])
    Trainer(heads_only, model=sam, dataset=ArrayDataset([TrainItem("box", image, truth)])).train()
    assert not torch.equal(sam.image_encoder.blocks[0].attn.qkv.weight, before)


@pytest.mark.parametrize("mode", [torch.enable_grad, torch.no_grad, torch.inference_mode])
def test_whole_sam_converted_under_every_grad_mode_is_the_same_and_trains(mode):
    weights = MAEWeights(small_mae().state_dict(), MAEConfig(**SMALL), True, "small")
    donor = tiny_donor()
    expected = mae_to_sam(weights, donor, image_size=64, window_size=2).state_dict()
    with mode():
        sam = mae_to_sam(weights, donor, image_size=64, window_size=2)
    assert all(torch.equal(v, expected[k]) for k, v in sam.state_dict().items())
    sam.image_encoder(torch.randn(1, 3, 64, 64)).sum().backward()
    assert sam.image_encoder.blocks[0].attn.qkv.weight.grad is not None

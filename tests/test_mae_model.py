"""The MAE against transformers' ViTMAEForPreTraining on the same weights and noise (mask, loss,
reconstructed patches), the official layout against timm's ViT, and the masking's rules."""

import numpy as np
import pytest
import torch

from grounded.mae import MAECheckpointError, MAEConfig, MaskedAutoencoder, load_mae, patchify, read_mae_weights, save_mae, unpatchify
from grounded.mae.masking import random_masking, visible_count
from grounded.mae.model import sincos_pos_embed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def hf_config(**kw):
    from transformers import ViTMAEConfig

    base = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, decoder_hidden_size=24, decoder_num_hidden_layers=2,
                decoder_num_attention_heads=3, decoder_intermediate_size=96, mask_ratio=0.75)
    base.update(kw)
    return ViTMAEConfig(**base)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A random ViTMAEForPreTraining saved as a Hugging Face folder (what facebook/vit-mae-* holds)."""
    from transformers import ViTMAEForPreTraining

    torch.manual_seed(0)
    model = ViTMAEForPreTraining(hf_config()).eval()
    with torch.no_grad():  # non-trivial biases, norms and tokens, so a mix-up cannot hide
        for name, p in model.named_parameters():
            if "position" not in name and "pos_embed" not in name:
                p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("vit-mae-tiny")
    model.save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("grad_mode", ["grad", "no_grad", "inference_mode"])
def test_matches_transformers_mask_loss_and_reconstruction(hf_folder, norm_pix_loss, grad_mode):
    folder, reference = hf_folder
    reference.config.norm_pix_loss = norm_pix_loss
    ours = load_mae(folder)
    torch.manual_seed(1)
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        expected = reference(pixel_values=images, noise=noise)
    context = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[grad_mode]
    with context():
        out = ours(images, 0.75, noise=noise)
        loss = ours.loss(images, out.pred, out.mask, norm_pix_loss)
    assert torch.equal(out.mask, expected.mask)
    assert torch.equal(out.ids_restore, expected.ids_restore)
    assert out.mask.sum(1).tolist() == [12, 12, 12]  # int(16 * 0.25) = 4 visible of 16
    assert (out.pred - expected.logits).abs().max() < 1e-5
    assert abs(float(loss.detach()) - float(expected.loss)) < 1e-5
    if grad_mode == "grad":
        loss.backward()
        assert ours.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        assert ours.pos_embed.grad is None  # fixed, as in the official code


def test_reads_a_transformers_encoder_only_folder_and_refuses_it_as_a_whole_mae(tmp_path):
    from transformers import ViTMAEModel

    torch.manual_seed(0)
    encoder = ViTMAEModel(hf_config()).eval()
    encoder.save_pretrained(tmp_path)
    weights = read_mae_weights(tmp_path)
    assert not weights.has_decoder and weights.config.embed_dim == 32 and weights.config.norm_eps == 1e-12
    assert torch.equal(weights.state_dict["blocks.1.attn.qkv.weight"][:32],
                       encoder.layers[1].attention.q_proj.weight)
    with pytest.raises(MAECheckpointError, match="encoder only"):
        load_mae(tmp_path)


def test_position_embedding_is_the_official_sincos():
    """The official MAE (util/pos_embed.py) gives the first half of the channels the column index;
    transformers 5's builder gives it the row: the same table with the grid transposed."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    for dim, grid in ((32, 4), (192, 14), (1280, 16)):
        rows_first = build_2d_sinusoidal_position_embedding(grid, grid, dim, cls_token=True)
        expected = torch.cat([rows_first[:1], rows_first[1:].reshape(grid, grid, dim).transpose(0, 1).reshape(-1, dim)])
        assert torch.equal(sincos_pos_embed(dim, grid), expected)
        assert not torch.equal(sincos_pos_embed(dim, grid), rows_first)


def test_transformers_names_of_both_generations_convert_alike(hf_folder):
    """Hub files name layers as transformers 4 did (`encoder.layer.N.attention.attention.query`,
    `decoder.decoder_layers.N`), transformers 5.23 saves the decoder as `decoder.decoder_encoder.layer.N`,
    and its modules say `layers.N.attention.q_proj`: all three read as the same official state dict."""
    from safetensors.torch import load_file

    from grounded.mae.load import convert_hf_state_dict

    folder, model = hf_folder
    saved = load_file(str(folder / "model.safetensors"))
    hub = {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v for k, v in saved.items()}
    assert any(k.startswith("decoder.decoder_encoder.layer.") for k in saved)
    expected = convert_hf_state_dict(saved)
    assert len(expected) == len(MaskedAutoencoder(read_mae_weights(folder).config).state_dict())
    for layout in (hub, model.state_dict()):
        converted = convert_hf_state_dict(layout)
        assert converted.keys() == expected.keys()
        assert all(torch.equal(converted[k], expected[k]) for k in expected)


def test_encoder_equals_timm_vit_in_the_official_layout():
    """The official checkpoints' names are timm's ViT's: the same weights give the same tokens."""
    import timm

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=0, global_pool="").eval()
    sd = vit.state_dict()
    mae = MaskedAutoencoder(MAEConfig(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                                      decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))
    missing, unexpected = mae.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.startswith(("decoder_", "mask_token")) for k in missing)
    images = torch.randn(2, 3, 32, 32)
    noise = torch.arange(16.0).expand(2, 16)  # ascending noise: the first 4 patches stay visible, in order
    with torch.no_grad():
        latent, mask, _ = mae.forward_encoder(images, 0.75, noise=noise)
        # timm on the same 4 visible patches: its pos_embed is the same tensor, its blocks the same weights
        x = vit.patch_embed(images)[:, :4] + vit.pos_embed[:, 1:5]
        x = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
        expected = vit.norm(vit.blocks(x))
    assert (latent - expected).abs().max() < 1e-5
    assert mask[:, :4].sum() == 0 and mask[:, 4:].sum() == 2 * 12


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MaskedAutoencoder(MAEConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))
    save_mae(model, tmp_path / "m")
    loaded = load_mae(tmp_path / "m")
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5, 1.5])
def test_mask_ratio_outside_zero_one_is_refused(ratio):
    model = MaskedAutoencoder(MAEConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))
    with pytest.raises(ValueError, match="mask_ratio must lie strictly between 0 and 1"):
        model(torch.randn(1, 3, 32, 32), ratio)


def test_masking_keeps_the_lowest_noise_and_restores_order():
    assert visible_count(196, 0.75) == 49 and visible_count(16, 0.9) == 1
    with pytest.raises(ValueError, match="leaves 0 of 4"):
        visible_count(4, 0.8)
    tokens = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2, 8, 3)
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 0.6], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    visible, mask, restore = random_masking(tokens, 0.75, noise)
    assert torch.equal(visible[0], tokens[0, [1, 5]]) and torch.equal(visible[1], tokens[1, [0, 1]])
    assert mask[0].tolist() == [1, 0, 1, 1, 1, 0, 1, 1]
    shuffled = torch.gather(tokens, 1, torch.argsort(noise, 1)[..., None].expand(-1, -1, 3))
    assert torch.equal(torch.gather(shuffled, 1, restore[..., None].expand(-1, -1, 3)), tokens)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(random_masking(tokens, 0.5, generator=g1)[1], random_masking(tokens, 0.5, generator=g2)[1])


def test_patchify_is_transformers_and_unpatchify_inverts_it():
    from transformers import ViTMAEForPreTraining

    reference = ViTMAEForPreTraining(hf_config(num_hidden_layers=1, decoder_num_hidden_layers=1))
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(patchify(images, 8), reference.patchify(images))
    assert torch.equal(unpatchify(patchify(images, 8), 8, 32, 32), images)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        patchify(torch.randn(1, 3, 30, 32), 8)


def test_wrong_image_size_is_refused_with_the_expected_shape():
    model = MaskedAutoencoder(MAEConfig(image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))
    with pytest.raises(ValueError, match=r"B x 3 x 32 x 32, got \(1, 3, 64, 64\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        MAEConfig(image_size=30, patch_size=8)
    assert np.isclose(MAEConfig().num_patches, 196)


@pytest.mark.parametrize("mode", [torch.enable_grad, torch.no_grad, torch.inference_mode])
def test_loaders_and_patch_helpers_under_every_grad_mode(hf_folder, tmp_path, mode):
    """read_mae_weights, load_mae, save_mae, patchify / unpatchify and random_masking inside the
    caller's grad mode give what they give in grad mode; the models they load train afterwards."""
    folder, _ = hf_folder
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with mode():
        weights = read_mae_weights(folder)
        model = load_mae(folder)
        again = load_mae(save_mae(model, tmp_path / "saved"))
        patches = patchify(images, 8)
        restored = unpatchify(patches, 8, 32, 32)
        visible, mask, ids_restore = random_masking(patches, 0.75, noise=noise)
    expected = random_masking(patchify(images, 8), 0.75, noise=noise)
    assert torch.equal(restored, images) and all(torch.equal(a, b) for a, b in zip((visible, mask, ids_restore), expected))
    assert all(torch.equal(weights.state_dict[k], v) for k, v in model.state_dict().items() if k in weights.state_dict)
    for loaded in (model, again):
        out = loaded.train()(images.clone(), 0.75, noise=noise)
        loaded.loss(images, out.pred, out.mask).backward()
        assert loaded.blocks[0].attn.qkv.weight.grad.abs().sum() > 0

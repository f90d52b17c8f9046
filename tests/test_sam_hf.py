"""Hugging Face transformers SAM checkpoints in grounded: key mapping, config mapping, folders, hub ids
from the local cache, and numerical parity with transformers' own SamModel on a tiny random model."""

import json
import shutil

import pytest
import torch

from grounded.sam import hf as sam_hf
from grounded.sam.build import build_sam, from_pretrained, load_state_dict_strict
from grounded.sam.checkpoint import CheckpointError, infer_config, read_state_dict
from grounded.sam.config import OFFICIAL_CONFIGS
from grounded.sam.hf import convert_hf_state_dict, load_hf_folder, sam_config_from_hf
from grounded.testing.hf_cache import REVISION as REV, install_in_hf_cache

IMAGE_SIZE = 128  # 8 x 8 image embedding grid; window 3 exercises the window padding
GRID = IMAGE_SIZE // 16


def _hf_config(layer_norm_eps=1e-5):
    transformers = pytest.importorskip("transformers")
    return transformers.SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=16, window_size=3, global_attn_indexes=[1],
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=IMAGE_SIZE, patch_size=16, mask_input_channels=8),
        # The official two-way blocks use LayerNorm's default eps (1e-5); transformers' default 1e-6 is a
        # real (tiny) numerical difference of the HF port, so the parity model uses 1e-5.
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=24, layer_norm_eps=layer_norm_eps),
    )


def _tiny_hf_model(seed=0, layer_norm_eps=1e-5):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    model = transformers.SamModel(_hf_config(layer_norm_eps)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Every parameter random, including rel_pos_h/w and pos_embed that transformers initialises to zero.
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        pe = torch.randn(model.shared_image_embedding.positional_embedding.shape, generator=gen)
        model.shared_image_embedding.positional_embedding.copy_(pe)
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(pe)  # transformers ties the two
    return model


@pytest.fixture(scope="module")
def hf_model():
    return _tiny_hf_model()


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "sam-tiny"
    hf_model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- parity with transformers


def _ours(model, emb, points=None, boxes=None, masks=None, multimask=True):
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
    return model.mask_decoder(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                              multimask_output=multimask)


def _theirs(model, emb, points=None, labels=None, boxes=None, masks=None, multimask=True):
    # Conventions: transformers' prompts carry an extra leading image-batch axis. Its "point batch" axis
    # is the official prompt-batch axis: official points P x N x 2 / labels P x N / boxes P x 4 are HF
    # input_points 1 x P x N x 2 / input_labels 1 x P x N / input_boxes 1 x P x 4, and HF pred_masks
    # 1 x P x M x h x w are the official P x M x h x w. Both pad the points with one "not a point"
    # (label -1, coordinate 0) exactly when no box is given. transformers' extra label -10 (its
    # processor's padding for ragged point lists: a zero embedding) has no official counterpart and is
    # not used here. input_masks (1 x 1 x 4h x 4w) is per image, repeated over the point batch.
    out = model(image_embeddings=emb,
                input_points=None if points is None else points[None],
                input_labels=None if labels is None else labels[None],
                input_boxes=None if boxes is None else boxes[None],
                input_masks=masks, multimask_output=multimask)
    return out.pred_masks[0], out.iou_scores[0]


PROMPTS = {
    "point": dict(points=[[[40.0, 70.0]]], labels=[[1]]),
    "points_pos_neg": dict(points=[[[40.0, 70.0], [100.5, 12.0], [3.0, 120.0]]], labels=[[1, 0, 1]]),
    "box": dict(boxes=[[10.0, 20.0, 90.0, 110.0]]),
    "point_and_box": dict(points=[[[40.0, 70.0]]], labels=[[1]], boxes=[[10.0, 20.0, 90.0, 110.0]]),
    "two_prompts_points_and_boxes": dict(points=[[[40.0, 70.0], [5.0, 6.0]], [[100.0, 30.0], [64.0, 64.0]]],
                                         labels=[[1, 0], [1, 1]],
                                         boxes=[[10.0, 20.0, 90.0, 110.0], [50.0, 0.0, 127.0, 60.0]]),
    "point_and_mask": dict(points=[[[40.0, 70.0]]], labels=[[1]], mask=True),
}


@pytest.fixture(scope="module")
def parity_models(hf_model, hf_folder):
    ours = from_pretrained(hf_folder)
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        their_emb = hf_model.get_image_embeddings(image)
        our_emb = ours.image_encoder(image)
    return hf_model, ours, their_emb, our_emb


def test_image_embeddings_match_transformers(parity_models):
    _, ours, their_emb, our_emb = parity_models
    assert ours.config.decoder_num_heads == 2 and ours.config.iou_head_hidden_dim == 24
    assert our_emb.shape == their_emb.shape == (1, 32, GRID, GRID)
    torch.testing.assert_close(our_emb, their_emb, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_masks_match_transformers(parity_models, prompt, multimask):
    hf_model, ours, their_emb, our_emb = parity_models
    spec = PROMPTS[prompt]
    points = torch.tensor(spec["points"]) if "points" in spec else None
    labels = torch.tensor(spec["labels"], dtype=torch.int64) if "labels" in spec else None
    boxes = torch.tensor(spec["boxes"]) if "boxes" in spec else None
    masks = None
    if spec.get("mask"):
        masks = torch.randn(1, 1, 4 * GRID, 4 * GRID, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        their_masks, their_iou = _theirs(hf_model, their_emb, points, labels, boxes, masks, multimask)
        our_masks, our_iou = _ours(ours, our_emb, None if points is None else (points, labels), boxes, masks, multimask)
    n_prompts = (points if points is not None else boxes).shape[0]
    n_masks = 3 if multimask else 1
    assert our_masks.shape == their_masks.shape == (n_prompts, n_masks, 4 * GRID, 4 * GRID)
    assert our_iou.shape == their_iou.shape == (n_prompts, n_masks)
    torch.testing.assert_close(our_masks, their_masks, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(our_iou, their_iou, atol=1e-5, rtol=1e-4)


def test_transformers_default_layer_norm_eps_differs_only_slightly(tmp_path):
    """Published HF configs use layer_norm_eps=1e-6 in the two-way blocks where the official model has
    1e-5; grounded follows the official model. The difference stays in the last digits."""
    hf_model = _tiny_hf_model(seed=3, layer_norm_eps=1e-6)
    hf_model.save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path)
    image = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(4))
    points, labels = torch.tensor([[[40.0, 70.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        emb = hf_model.get_image_embeddings(image)
        their_masks, their_iou = _theirs(hf_model, emb, points, labels)
        our_masks, our_iou = _ours(ours, ours.image_encoder(image), (points, labels))
    # Measured: about 2e-6 here (and 1e-7 with eps 1e-5).
    torch.testing.assert_close(our_masks, their_masks, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(our_iou, their_iou, atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- state dict and config mapping


def test_every_key_maps_and_loads_strictly(hf_model, hf_folder):
    """sam_model_registry-style file loading: read the HF safetensors file, convert, load strict."""
    hf_sd = read_state_dict(hf_folder / "model.safetensors")
    assert "prompt_encoder.shared_embedding.positional_embedding" not in hf_sd  # save_pretrained drops the tie
    sd, config = convert_hf_state_dict(hf_sd)
    assert config is None
    assert not any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in sd)
    inferred = infer_config(sd)
    model = build_sam(inferred)
    load_state_dict_strict(model, sd, "hf tiny")
    theirs = hf_model.state_dict()
    ours = model.state_dict()
    # A few renames, tensor for tensor.
    pairs = {
        "image_encoder.patch_embed.proj.weight": "vision_encoder.patch_embed.projection.weight",
        "image_encoder.blocks.1.norm2.bias": "vision_encoder.layers.1.layer_norm2.bias",
        "image_encoder.neck.2.weight": "vision_encoder.neck.conv2.weight",
        "image_encoder.neck.3.bias": "vision_encoder.neck.layer_norm2.bias",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "shared_image_embedding.positional_embedding",
        "prompt_encoder.point_embeddings.3.weight": "prompt_encoder.point_embed.3.weight",
        "prompt_encoder.mask_downscaling.4.weight": "prompt_encoder.mask_embed.layer_norm2.weight",
        "prompt_encoder.mask_downscaling.6.weight": "prompt_encoder.mask_embed.conv3.weight",
        "mask_decoder.output_upscaling.1.weight": "mask_decoder.upscale_layer_norm.weight",
        "mask_decoder.output_upscaling.3.weight": "mask_decoder.upscale_conv2.weight",
        "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight": "mask_decoder.output_hypernetworks_mlps.2.proj_in.weight",
        "mask_decoder.output_hypernetworks_mlps.2.layers.1.weight": "mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
        "mask_decoder.output_hypernetworks_mlps.2.layers.2.bias": "mask_decoder.output_hypernetworks_mlps.2.proj_out.bias",
        "mask_decoder.iou_prediction_head.layers.2.weight": "mask_decoder.iou_prediction_head.proj_out.weight",
        "mask_decoder.transformer.layers.1.norm4.weight": "mask_decoder.transformer.layers.1.layer_norm4.weight",
        "mask_decoder.transformer.norm_final_attn.bias": "mask_decoder.transformer.layer_norm_final_attn.bias",
    }
    for our_key, their_key in pairs.items():
        torch.testing.assert_close(ours[our_key], theirs[their_key], rtol=0, atol=0)
    # The same through from_pretrained on the file (no config.json: dimensions from the shapes).
    from_file = from_pretrained(hf_folder / "model.safetensors")
    for key, value in from_file.state_dict().items():
        torch.testing.assert_close(value, ours[key], rtol=0, atol=0)


def test_tied_positional_embedding_alone_is_used(hf_model):
    sd = dict(hf_model.state_dict())
    pe = sd.pop("shared_image_embedding.positional_embedding")
    converted, _ = convert_hf_state_dict(sd)
    torch.testing.assert_close(converted["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"], pe)


def test_unknown_keys_are_listed(hf_model):
    sd = dict(hf_model.state_dict())
    sd["vision_encoder.layers.0.attn.mystery"] = torch.zeros(1)
    sd["mask_decoder.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        convert_hf_state_dict(sd)
    assert "vision_encoder.layers.0.attn.mystery" in str(info.value)
    assert "mask_decoder.extra_head.weight" in str(info.value)


def test_config_from_hf_checked_against_weights(hf_model):
    config_dict = hf_model.config.to_dict()
    sd, config = convert_hf_state_dict(hf_model.state_dict(), config_dict)
    assert config == sam_config_from_hf(config_dict)
    assert (config.image_size, config.encoder_embed_dim, config.encoder_depth, config.encoder_num_heads) == (128, 32, 2, 2)
    assert config.encoder_global_attn_indexes == (1,) and config.window_size == 3
    assert (config.prompt_embed_dim, config.mask_in_chans, config.decoder_mlp_dim) == (32, 8, 64)
    assert (config.decoder_num_heads, config.iou_head_depth, config.iou_head_hidden_dim) == (2, 3, 24)

    wrong = json.loads(json.dumps(config_dict))
    wrong["mask_decoder_config"]["mlp_dim"] = 128
    wrong["vision_config"]["global_attn_indexes"] = [0]
    with pytest.raises(CheckpointError, match="mlp_dim|decoder_mlp_dim") as info:
        convert_hf_state_dict(hf_model.state_dict(), wrong)
    assert "encoder_global_attn_indexes" in str(info.value)

    unbuildable = json.loads(json.dumps(config_dict))
    unbuildable["vision_config"]["use_abs_pos"] = False
    with pytest.raises(CheckpointError, match="use_abs_pos"):
        sam_config_from_hf(unbuildable)


@pytest.mark.parametrize("variant,vision", [
    ("vit_b", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, global_attn_indexes=[2, 5, 8, 11])),
    ("vit_l", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, global_attn_indexes=[5, 11, 17, 23])),
    ("vit_h", dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31])),
])
def test_published_configs_are_the_official_variants(variant, vision):
    """The facebook/sam-vit-* config.json files (sparse: transformers' defaults fill the rest)."""
    config = sam_config_from_hf({"model_type": "sam", "vision_config": dict(vision, mlp_dim=4 * vision["hidden_size"]),
                                 "prompt_encoder_config": {}, "mask_decoder_config": {}})
    assert config == OFFICIAL_CONFIGS[variant]


# ---------------------------------------------------------------- folders: formats and errors


def _save_bin(hf_folder, out, shards=1):
    """The folder's weights as pytorch_model.bin (or `shards` .bin files with an index), as older
    transformers saved them (5.x writes safetensors only)."""
    from safetensors.torch import load_file

    out.mkdir()
    shutil.copy(hf_folder / "config.json", out / "config.json")
    state = load_file(hf_folder / "model.safetensors")
    if shards == 1:
        torch.save(state, out / "pytorch_model.bin")
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in names[i::shards]}, out / shard)
        weight_map.update({k: shard for k in names[i::shards]})
    (out / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_pytorch_bin_and_sharded_folders(hf_model, hf_folder, tmp_path):
    reference, config = load_hf_folder(hf_folder)
    _save_bin(hf_folder, tmp_path / "bin")
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    _save_bin(hf_folder, tmp_path / "sharded_bin", shards=3)
    assert (tmp_path / "bin" / "pytorch_model.bin").is_file()
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert (tmp_path / "sharded_bin" / "pytorch_model.bin.index.json").is_file()
    for name in ("bin", "sharded", "sharded_bin"):
        sd, cfg = load_hf_folder(tmp_path / name)
        assert cfg == config
        assert sd.keys() == reference.keys()
        for key in sd:
            torch.testing.assert_close(sd[key], reference[key], rtol=0, atol=0)

    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "sharded" / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        load_hf_folder(tmp_path / "sharded")


def test_preprocessor_statistics(hf_folder, tmp_path):
    folder = tmp_path / "with_pre"
    shutil.copytree(hf_folder, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "rescale_factor": 0.00392156862745098,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    _, config = load_hf_folder(folder)
    assert config.pixel_mean == (123.675, 116.28, 103.53)
    assert config.pixel_std == (58.395, 57.12, 57.375)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    assert from_pretrained(folder).pixel_mean.flatten().tolist() == [127.5] * 3


def test_other_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError) as info:  # CheckpointError is a ValueError
        from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value) and "'clip'" in str(info.value)


def test_folder_without_weights(hf_folder, tmp_path):
    shutil.copy(hf_folder / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError) as info:
        from_pretrained(tmp_path)
    for name in sam_hf.WEIGHT_FILES:
        assert name in str(info.value)


# ---------------------------------------------------------------- hub ids from the local cache


def _fill_cache(cache, hf_folder, repo="org/name"):
    return install_in_hf_cache(hf_folder, cache, repo, REV)


def _assert_same_weights(model, reference):
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)


def test_hub_id_from_hf_hub_cache_env(hf_folder, tmp_path, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cache = _fill_cache(tmp_path / "hub", hf_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # huggingface_hub reads HF_HUB_CACHE once, when it is first imported (it already is in this process),
    # so the running process also needs its constant pointed at the cache.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    model = from_pretrained("org/name")
    _assert_same_weights(model, from_pretrained(hf_folder))
    assert model.config.decoder_num_heads == 2
    # An explicit revision (the commit) resolves too.
    _assert_same_weights(from_pretrained("org/name", revision=REV), model)


def test_hub_id_with_cache_dir(hf_folder, tmp_path, monkeypatch):
    cache = _fill_cache(tmp_path / "elsewhere", hf_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = from_pretrained("org/name", cache_dir=cache)
    _assert_same_weights(model, from_pretrained(hf_folder))


def test_unknown_hub_id_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as info:
        from_pretrained("nobody/no-such-sam", cache_dir=tmp_path)
    message = str(info.value)
    assert "nobody/no-such-sam" in message and "Tried" in message
    assert "local path" in message and "hub id" in message and str(tmp_path) in message

"""CLIP through open_clip and transformers: loading (folder, 'local-dir:', architecture name +
checkpoint file, hub ids from a temporary Hugging Face cache), tokens, masked crops and their
scores, the clip_score node, and bad input. The ranking tests use a tiny CLIP trained on
synthetic shapes (grounded.testing.clip), because a random CLIP cannot rank anything."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from grounded.clip import CLIP_MEAN_RGB, load_clip, masked_crop, masked_crops
from grounded.testing.clip import TINY_OPEN_CLIP_CONFIG, WEIGHTS_FILE, random_tiny_open_clip, tiny_hf_clip, tiny_trained_clip
from grounded.testing.hf_cache import install_in_hf_cache, point_hf_cache_at
from grounded.testing.shapes import all_captions, shapes_dataset
from grounded.testing.tokenizers import assert_no_unknown_tokens

TEXTS = ["a red circle", "a blue square", "the yellow triangle"]


@pytest.fixture(scope="session")
def trained_clip_dir(tmp_path_factory):
    return tiny_trained_clip(tmp_path_factory.getbasetemp() / "tiny_clip")


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    return random_tiny_open_clip(tmp_path_factory.mktemp("open_clip"), seed=3)


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory):
    return tiny_hf_clip(tmp_path_factory.mktemp("hf_clip"), seed=1)


@pytest.fixture(scope="module")
def scene():
    return shapes_dataset(1, size=96, seed=5, shapes_per_image=3)[0]


# ---- synthetic shapes ---------------------------------------------------------------------------

def test_shapes_are_deterministic_and_their_masks_fit():
    a = shapes_dataset(4, size=64, seed=7, shapes_per_image=(1, 3))
    b = shapes_dataset(4, size=64, seed=7, shapes_per_image=(1, 3))
    c = shapes_dataset(4, size=64, seed=8, shapes_per_image=(1, 3))
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.masks, y.masks) for x, y in zip(a, b))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c))
    for s in a:
        assert s.masks.sum(axis=0).max() == 1  # shapes never overlap
        for mask, cap in zip(s.masks, s.captions):
            assert cap in all_captions()
            pixels = s.image[mask].astype(int)
            assert np.abs(pixels - s.image[mask].mean(axis=0)).max() < 40  # one colour per shape
            assert (s.image[~s.masks.any(axis=0)] == s.background).all()


# ---- masked crops -------------------------------------------------------------------------------

def test_masked_crop_keeps_the_mask_and_blanks_the_rest(scene):
    mask = scene.masks[0]
    x0, y0, x1, y1 = scene.boxes[0].astype(int)
    crop = masked_crop(scene.image, mask, margin=0.0, square=False)
    assert crop.shape == (y1 - y0, x1 - x0, 3)
    inside = mask[y0:y1, x0:x1]
    assert np.array_equal(crop[inside], scene.image[y0:y1, x0:x1][inside])
    assert (crop[~inside] == CLIP_MEAN_RGB).all()
    square = masked_crop(scene.image, mask, margin=0.2)
    assert square.shape[0] == square.shape[1] >= max(x1 - x0, y1 - y0)
    assert (square[0, 0] == CLIP_MEAN_RGB).all()
    with pytest.raises(ValueError, match="mask is"):
        masked_crop(scene.image, mask[:10])
    empty = masked_crops(scene.image, np.zeros((1, 96, 96), bool))
    assert (empty[0] == CLIP_MEAN_RGB).all()


# ---- loading: open_clip ------------------------------------------------------------------------

def _embeddings(clip, scene):
    return clip.encode_text(TEXTS), clip.encode_images([scene.image])


def test_open_clip_folder_local_dir_name_plus_file_and_hub_id_agree(open_clip_dir, scene, tmp_path, monkeypatch):
    import open_clip

    by_folder = load_clip(str(open_clip_dir))
    assert by_folder.backend == "open_clip" and by_folder.embed_dim == TINY_OPEN_CLIP_CONFIG["embed_dim"]
    text, image = _embeddings(by_folder, scene)
    assert text.shape == (3, 32) and image.shape == (1, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(text[0], text[1], atol=1e-3)

    local_dir = load_clip(f"local-dir:{open_clip_dir}")
    # An architecture registered by name, with a checkpoint file: create_model_and_transforms(name, pretrained=file).
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-test-clip", json.loads(json.dumps(TINY_OPEN_CLIP_CONFIG)))
    by_name = load_clip("tiny-test-clip", pretrained=str(open_clip_dir / WEIGHTS_FILE))
    cache = install_in_hf_cache(open_clip_dir, tmp_path / "hub", "grounded-test/tiny-open-clip")
    point_hf_cache_at(monkeypatch, cache)
    by_hub = load_clip("hf-hub:grounded-test/tiny-open-clip")
    for other in (local_dir, by_name, by_hub):
        t, i = _embeddings(other, scene)
        assert torch.allclose(t, text, atol=1e-6) and torch.allclose(i, image, atol=1e-6)


def test_open_clip_checkpoint_of_another_config_is_refused(open_clip_dir, monkeypatch):
    import open_clip

    wider = json.loads(json.dumps(TINY_OPEN_CLIP_CONFIG))
    wider["vision_cfg"]["width"] = 96
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "tiny-test-clip-wide", wider)
    with pytest.raises(ValueError, match="does not fit"):
        load_clip("tiny-test-clip-wide", pretrained=str(open_clip_dir / WEIGHTS_FILE))


def test_missing_and_unknown_models_say_what_was_tried(tmp_path, open_clip_dir):
    with pytest.raises(FileNotFoundError, match="not found. Tried"):
        load_clip(str(tmp_path / "no_such_clip"))
    with pytest.raises(FileNotFoundError, match="neither open_clip_config.json"):
        load_clip(str(tmp_path))
    with pytest.raises(ValueError, match="give its open_clip model name"):
        load_clip(str(open_clip_dir / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_clip("no-such-arch", pretrained=str(open_clip_dir / WEIGHTS_FILE))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_clip("ViT-B-32", pretrained=str(tmp_path / "missing.bin"))


# ---- loading: transformers ---------------------------------------------------------------------

def test_transformers_clip_by_folder_and_hub_id(hf_clip_dir, scene, tmp_path, monkeypatch):
    from transformers import CLIPModel, CLIPTokenizerFast

    from grounded.transformers_compat import pooled

    clip = load_clip(str(hf_clip_dir))
    assert clip.backend == "transformers" and clip.embed_dim == 16
    assert_no_unknown_tokens(clip.tokenizer, TEXTS)
    ids = clip.tokenizer("a red circle")["input_ids"]
    assert clip.tokenizer.convert_ids_to_tokens(ids)[1:-1] == ["a</w>", "red</w>", "circle</w>"]
    text, image = _embeddings(clip, scene)
    # The wrapper's embeddings are the model's own features, normalised.
    ref = CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = CLIPTokenizerFast.from_pretrained(hf_clip_dir)
    with torch.no_grad():
        feats = pooled(ref.get_text_features(**tok(TEXTS, padding=True, return_tensors="pt")))
    assert torch.allclose(text, feats / feats.norm(dim=-1, keepdim=True), atol=1e-5)
    assert not torch.allclose(text[0], text[1], atol=1e-3)

    cache = install_in_hf_cache(hf_clip_dir, tmp_path / "hub", "grounded-test/tiny-clip")
    point_hf_cache_at(monkeypatch, cache)
    by_hub = load_clip("grounded-test/tiny-clip")
    t, i = _embeddings(by_hub, scene)
    assert torch.allclose(t, text, atol=1e-6) and torch.allclose(i, image, atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"hub id 'grounded-test/not-cached' \(offline, cache .*hub"):
        load_clip("grounded-test/not-cached")


def test_open_clip_and_transformers_agree_on_the_same_weights(open_clip_dir, scene, tmp_path):
    from grounded.testing.clip import hf_clip_from_open_clip

    a = load_clip(str(open_clip_dir))
    b = load_clip(str(hf_clip_from_open_clip(open_clip_dir, tmp_path / "as_transformers")))
    assert (a.backend, b.backend) == ("open_clip", "transformers")
    texts = TEXTS + ["part of a green triangle", "the background"]
    assert torch.allclose(a.encode_text(texts), b.encode_text(texts), atol=1e-5)
    crops = masked_crops(scene.image, scene.masks)
    # Each backend preprocesses on its own (open_clip's transform, CLIPImageProcessor): same pixels here.
    assert torch.allclose(a._preprocess(crops), b._preprocess(crops), atol=1e-5)
    assert np.allclose(a.score_masks(scene.image, scene.masks, texts), b.score_masks(scene.image, scene.masks, texts),
                       atol=1e-5)


def test_transformers_weights_of_another_config_are_refused(hf_clip_dir, tmp_path):
    import shutil

    folder = Path(shutil.copytree(hf_clip_dir, tmp_path / "wrong"))
    config = json.loads((folder / "config.json").read_text())
    config["projection_dim"] = 24
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit its config.json"):
        load_clip(str(folder))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_reaches_both_backends(open_clip_dir, hf_clip_dir, scene, dtype):
    for folder in (open_clip_dir, hf_clip_dir):
        full = load_clip(str(folder))
        half = load_clip(str(folder), dtype=dtype)
        # (open_clip's bf16/fp16 casts the matmul weights and keeps its LayerNormFp32 and embeddings float32)
        assert half.model.visual_projection.weight.dtype == dtype if half.backend == "transformers" \
            else half.model.visual.conv1.weight.dtype == dtype
        emb = half.encode_images([scene.image])
        assert emb.dtype == torch.float32  # embeddings come back float32 whatever ran
        assert torch.nn.functional.cosine_similarity(emb, full.encode_images([scene.image])).item() > 0.98


def test_empty_and_punctuation_only_texts_are_refused(open_clip_dir):
    clip = load_clip(str(open_clip_dir))
    for bad, message in [("", "empty"), ("   ", "empty"), ("?!. ,", "only punctuation")]:
        with pytest.raises(ValueError, match=message):
            clip.encode_text([bad])


# ---- scores of masked crops (trained tiny CLIP) ------------------------------------------------

def test_masked_crop_scores_pick_each_shapes_caption(trained_clip_dir):
    clip = load_clip(str(trained_clip_dir))
    scenes = shapes_dataset(12, size=96, seed=2024, shapes_per_image=3)  # held out: not the training seed
    right = total = 0
    for s in scenes:
        sims = clip.score_masks(s.image, s.masks, s.captions)
        assert sims.shape == (3, 3)
        # score_masks is the crops' image embeddings against the texts' embeddings
        manual = clip.encode_images(masked_crops(s.image, s.masks)) @ clip.encode_text(s.captions).T
        assert np.allclose(sims, manual.numpy(), atol=1e-5)
        right += int((sims.argmax(axis=1) == np.arange(3)).sum())
        total += 3
    # Chance is 1/3 per mask; the trained model picks its own caption for most of them.
    assert right / total >= 0.75, f"{right}/{total}"
    assert clip.score_masks(scenes[0].image, np.zeros((0, 96, 96), bool), ["a red circle"]).shape == (0, 1)


def test_clip_score_node_ranks_detections(trained_clip_dir):
    from grounded.nodes import ClipScore
    from grounded.pipeline import ModelCache, Pipeline
    from grounded.types import Detections, Sample

    s = next(x for x in shapes_dataset(40, size=96, seed=78, shapes_per_image=3) if "a red circle" in x.captions)
    node = ClipScore(model=str(trained_clip_dir), text="a red circle", top_k=2)
    assert "text" not in node.reads
    by_label = ClipScore(model=str(trained_clip_dir), use_labels=True)
    with ModelCache() as models:
        best = Pipeline([node], inputs=["image", "detections"])(Sample(image=s.image, detections=Detections.from_masks(s.masks)), models=models).detections
        labelled = Detections.from_masks(s.masks, labels=s.captions)
        own = Pipeline([by_label], inputs=["image", "detections"])(Sample(image=s.image, detections=labelled), models=models).detections
        clip = models.get("clip", str(trained_clip_dir))
        sims = clip.score_masks(s.image, s.masks, s.captions)
    assert len(best) == 2 and best.labels == ["a red circle"] * 2
    assert best.data["clip_score"][0] >= best.data["clip_score"][1]
    assert np.array_equal(best.mask[0], s.masks[s.index_of("a red circle")])
    # use_labels: each detection against its own label, best first
    assert sorted(own.data["clip_score"].tolist(), reverse=True) == pytest.approx(sorted(np.diag(sims), reverse=True), abs=1e-5)
    with pytest.raises(ValueError, match="set model"):
        ClipScore()
    with pytest.raises(ValueError, match="only punctuation"):
        ClipScore(model=str(trained_clip_dir), text="...")


def test_a_bfloat16_save_loads_in_float32_unless_asked(hf_clip_dir, scene, tmp_path):
    """transformers 5 keeps a checkpoint's saved dtype; `load_clip` gives float32 unless asked."""
    from transformers import CLIPModel

    from grounded.testing.bf16 import bfloat16_copy

    folder = bfloat16_copy(hf_clip_dir, tmp_path / "bf16")
    assert CLIPModel.from_pretrained(folder).visual_projection.weight.dtype == torch.bfloat16
    full = load_clip(str(folder))
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    assert load_clip(str(folder), dtype=torch.float16).model.visual_projection.weight.dtype == torch.float16
    assert full.encode_images([scene.image]).dtype == torch.float32

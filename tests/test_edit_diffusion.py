"""Stable Diffusion inpainting through diffusers' real pipelines, on tiny random SD and SDXL
inpainting models saved and loaded back (by folder and by hub id from a temporary Hugging Face
cache): sizes rounded to multiples of 8 and restored, seeds, schedulers, and no pixel outside
the dilated mask changed."""

import shutil

import numpy as np
import pytest

pytest.importorskip("diffusers")

from grounded.edit.diffusion import InpaintModelNotFound, inpaint, load_inpaint_pipeline, round8, set_scheduler
from grounded.edit.local import dilate
from grounded.testing.diffusion import tiny_sd_inpaint, tiny_sdxl_inpaint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return tiny_sd_inpaint(tmp_path_factory.mktemp("tiny-sd-inpaint"))


@pytest.fixture(scope="module")
def sd(sd_folder):
    return load_inpaint_pipeline(str(sd_folder))


def picture(h=50, w=70):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[12:30, 20:44] = True
    return image, mask


def test_loads_the_inpainting_pipeline_from_a_folder(sd):
    assert type(sd).__name__ == "StableDiffusionInpaintPipeline"
    assert sd.unet.config.in_channels == 9
    assert sd.safety_checker is None


def test_odd_sizes_round_to_8_and_come_back_with_only_the_mask_changed(sd):
    image, mask = picture()  # 70x50: not multiples of 8
    assert (round8(50), round8(70)) == (48, 72)
    out = inpaint(sd, image, mask, "a monkey", steps=2, seed=0, dilate_px=3, feather_px=2)
    assert out.shape == image.shape and out.dtype == np.uint8
    grown = dilate(mask, 3)
    assert (out[~grown] == image[~grown]).all()
    assert (out[mask] != image[mask]).any(axis=-1).mean() > 0.9


def test_the_seed_decides_the_result(sd):
    image, mask = picture()
    a = inpaint(sd, image, mask, "a monkey", steps=2, seed=1)
    b = inpaint(sd, image, mask, "a monkey", steps=2, seed=1)
    c = inpaint(sd, image, mask, "a monkey", steps=2, seed=2)
    assert (a == b).all()
    assert (a != c).any()


def test_scheduler_choice(sd):
    set_scheduler(sd, "ddim")
    assert type(sd.scheduler).__name__ == "DDIMScheduler"
    image, mask = picture()
    out = inpaint(sd, image, mask, "a monkey", steps=2, seed=0, scheduler="euler")
    assert type(sd.scheduler).__name__ == "EulerDiscreteScheduler" and out.shape == image.shape
    with pytest.raises(ValueError, match="unknown scheduler"):
        set_scheduler(sd, "warp-drive")
    set_scheduler(sd, "pndm")


def test_guidance_and_max_side(sd):
    image, mask = picture(120, 200)
    out = inpaint(sd, image, mask, "a monkey", steps=2, guidance=1.0, max_side=64, dilate_px=2)
    grown = dilate(mask, 2)
    assert out.shape == image.shape and (out[~grown] == image[~grown]).all()


def test_bad_inputs(sd, tmp_path):
    image, mask = picture()
    with pytest.raises(ValueError, match="empty"):
        inpaint(sd, image, np.zeros_like(mask), "a monkey", steps=1)
    with pytest.raises(ValueError, match="prompt"):
        inpaint(sd, image, mask, " ", steps=1)
    with pytest.raises(InpaintModelNotFound, match="model_index.json"):
        load_inpaint_pipeline(str(tmp_path))
    with pytest.raises(InpaintModelNotFound, match="not-a-user/no-such-model"):
        load_inpaint_pipeline("not-a-user/no-such-model")


def test_hub_id_from_a_temporary_cache(sd_folder, tmp_path, monkeypatch):
    from grounded.testing.hf_cache import install_in_hf_cache, point_hf_cache_at

    cache = install_in_hf_cache(sd_folder, tmp_path / "hub", "grounded-tests/tiny-sd-inpainting")
    point_hf_cache_at(monkeypatch, cache)
    pipe = load_inpaint_pipeline("grounded-tests/tiny-sd-inpainting")
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    image, mask = picture()
    assert inpaint(pipe, image, mask, "a cat", steps=1).shape == image.shape


def test_a_unet_without_the_mask_channels_is_refused(sd_folder, tmp_path):
    from diffusers import UNet2DConditionModel

    plain = tmp_path / "plain"
    shutil.copytree(sd_folder, plain)
    shutil.rmtree(plain / "unet")
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                         norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")).save_pretrained(plain / "unet")
    with pytest.raises(ValueError, match="not an inpainting UNet"):
        load_inpaint_pipeline(str(plain))


def test_sdxl_inpainting(tmp_path):
    folder = tiny_sdxl_inpaint(tmp_path / "tiny-sdxl")
    pipe = load_inpaint_pipeline(str(folder))
    assert type(pipe).__name__ == "StableDiffusionXLInpaintPipeline"
    image, mask = picture()
    out = inpaint(pipe, image, mask, "a monkey", steps=2, seed=0, dilate_px=2)
    grown = dilate(mask, 2)
    assert out.shape == image.shape and (out[~grown] == image[~grown]).all()
    assert (out[mask] != image[mask]).any(axis=-1).mean() > 0.9


def test_inpaint_and_apply_edits_nodes_through_the_model_cache(sd_folder):
    from grounded.detections import Detections
    from grounded.nodes.edit import ApplyEdits, Inpaint
    from grounded.pipeline import Pipeline
    from grounded.pipeline.models import ModelCache
    from grounded.types import Sample

    image, mask = picture()
    dets = Detections(np.array([[20, 12, 44, 30]], np.float32), mask=mask[None], labels=["dog"])
    with ModelCache() as models:
        node = Inpaint(model=str(sd_folder), prompt="a monkey", steps=2, device="cpu", dilate=2)
        out = Pipeline([node], inputs=["image", "detections"])(Sample(image=image, detections=dets), models=models)
        assert (out.edited_image[~dilate(mask, 2)] == image[~dilate(mask, 2)]).all()
        edits = [{"action": "replace", "target": "dog", "value": "monkey"}]
        apply = ApplyEdits(model=str(sd_folder), steps=2, device="cpu", dilate=2, feather=1)
        done = Pipeline([apply], inputs=["image", "detections", "edits"])(
            Sample(image=image, detections=dets, edits=edits), models=models)
        assert (done.edited_image[mask] != image[mask]).any()
        assert done.meta["edits"][0]["detection"] == 0
        removal = ApplyEdits(model=str(sd_folder), remove_with="diffusion", steps=2, device="cpu", dilate=2, feather=1)
        gone = Pipeline([removal], inputs=["image", "detections", "edits"])(
            Sample(image=image, detections=dets, edits=[{"action": "remove", "target": "dog", "value": None}]),
            models=models)
        assert (gone.edited_image[mask] != image[mask]).any(axis=-1).mean() > 0.9
        assert (gone.edited_image[~dilate(mask, 2)] == image[~dilate(mask, 2)]).all()
        assert [k[0] for k in models.loaded()] == ["sd_inpaint"]  # loaded once, shared by every node
    no_model = Pipeline([ApplyEdits()], inputs=["image", "detections", "edits"])
    with pytest.raises(ValueError, match="needs a diffusion model"):
        no_model(Sample(image=image, detections=dets, edits=edits))


def test_a_bfloat16_save_loads_in_float32_unless_asked(sd_folder, tmp_path):
    """transformers 5 keeps a checkpoint's saved dtype (the pipeline's text encoder); the loader asks
    for float32 unless given a dtype."""
    import torch

    from grounded.testing.bf16 import bfloat16_copy

    from diffusers import StableDiffusionInpaintPipeline

    folder = bfloat16_copy(sd_folder, tmp_path / "bf16")
    plain = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert next(plain.text_encoder.parameters()).dtype == torch.bfloat16  # what a loader without dtype gets
    pipe = load_inpaint_pipeline(str(folder))
    for part in (pipe.text_encoder, pipe.unet, pipe.vae):
        assert {p.dtype for p in part.parameters()} == {torch.float32}, type(part).__name__
    image, mask = picture()
    assert inpaint(pipe, image, mask, "a cat", steps=1).shape == image.shape

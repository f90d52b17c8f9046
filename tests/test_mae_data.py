"""Pre-training images: the inputs `grounded run` takes, bad files skipped and reported, MAE's crops."""

import numpy as np
import pytest
import torch
from PIL import Image

from grounded.mae.data import IMAGENET_MEAN, ImageSet, NoImagesError, crop_box, denormalise, normalise


def write_images(folder, n=3, size=(40, 56), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        path = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_folder_without_images_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here")
    with pytest.raises(NoImagesError, match="no image files in"):
        ImageSet([str(tmp_path)], image_size=32, min_size=8)


def test_bad_files_are_skipped_and_reported_and_the_rest_is_used(tmp_path):
    write_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "corrupt.png").write_bytes(b"this is not a png")
    Image.fromarray(np.zeros((8, 30, 3), np.uint8)).save(tmp_path / "imgs" / "thin.png")
    good = tmp_path / "imgs" / "img1.png"
    truncated = tmp_path / "imgs" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])  # a valid header, the pixels cut off
    reported = []
    images = ImageSet([str(tmp_path / "imgs")], image_size=32, min_size=16, on_error=lambda s, r: reported.append((s, r)))
    names = sorted(p.rsplit("/", 1)[-1] for p in images.sources)
    assert names == ["img0.png", "img1.png", "img2.png", "truncated.png"]  # truncated passes the header check
    reasons = dict((s.rsplit("/", 1)[-1], r) for s, r in reported)
    assert "not a readable image" in reasons["corrupt.png"]
    assert reasons["thin.png"] == "30x8 is smaller than one 16-pixel patch"
    index = images.sources.index(str(truncated))
    crop = images.sample(index, np.random.default_rng(0))  # decoding fails: the next good image stands in
    assert crop.shape == (3, 32, 32)
    assert "truncated.png" in reported[-1][0] and images.errors == reported
    images.sample(index, np.random.default_rng(1))
    assert len(images.errors) == 3  # reported once


def test_every_input_unusable_says_why(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(NoImagesError, match="tiny.png: 4x4 is smaller than one 16-pixel patch"):
        ImageSet([str(tmp_path)], image_size=32, min_size=16)


def test_globs_and_lists_are_inputs(tmp_path):
    paths = write_images(tmp_path / "a", n=2) + write_images(tmp_path / "b", n=2, seed=1)
    (tmp_path / "list.txt").write_text(f"{paths[2]}\n# a comment\nb/img1.png\n")
    images = ImageSet([str(tmp_path / "a" / "*.png"), str(tmp_path / "list.txt")], image_size=16)
    assert len(images) == 4


def test_crops_are_torchvision_random_resized_crops_and_reproducible():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = crop_box(100, 150, rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        areas.append(h * w / 15000)
        ratios.append(w / h)
    assert 0.19 < min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.45
    assert 0.7 < min(ratios) and max(ratios) < 1.4
    assert crop_box(100, 150, np.random.default_rng(3)) == crop_box(100, 150, np.random.default_rng(3))
    # a strip no allowed crop fits falls back to the largest centred crop of an allowed aspect
    assert crop_box(10, 400, np.random.default_rng(0), scale=(0.9, 1.0)) == (0, 193, 10, 13)


def test_flips_and_normalisation(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = 255
    Image.fromarray(image).save(tmp_path / "half.png")
    images = ImageSet([str(tmp_path)], image_size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    seen = {bool(denormalise(images.sample(0, np.random.default_rng(s)))[0, 0, 0] > 128) for s in range(12)}
    assert seen == {True, False}  # left half white, or flipped
    assert torch.allclose(normalise(np.full((2, 2, 3), 255 * np.array(IMAGENET_MEAN), np.float64).astype(np.uint8)),
                          torch.zeros(3, 2, 2), atol=0.02)
    assert np.array_equal(denormalise(images.center(0)), image)

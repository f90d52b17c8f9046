"""grounded.io.image: every kind of input becomes HxWx3 uint8 RGB, every bad one a clear ImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from grounded.io import (ImageError, ImageTooLargeError, load_image, load_image_with_info,
                         percentile_to_uint8)


def save(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def check_rgb(arr, shape):
    assert arr.dtype == np.uint8 and arr.shape == (*shape, 3)


# ---- files that must load ---------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(img, tmp_path / "photo.jpg", exif=exif, quality=95)
    arr, info = load_image_with_info(path)
    check_rgb(arr, (40, 20))  # width and height swapped
    assert info["exif_rotated"] and info["format"] == "JPEG"
    assert arr[3, -3, 0] > 200 and arr[3, -3, 2] < 60  # the block is now at the top-right
    assert arr[-3, 3, 2] > 200


def test_upper_case_extension_and_1x1(tmp_path):
    arr = load_image(save(Image.new("RGB", (1, 1), (10, 200, 30)), tmp_path / "ONE.JPG"))
    check_rgb(arr, (1, 1))
    assert np.allclose(arr[0, 0], (10, 200, 30), atol=12)


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    arr, info = load_image_with_info(path)
    check_rgb(arr, (6, 8))
    assert info["original_mode"] == "CMYK"
    assert np.allclose(arr[3, 3], (255, 0, 0), atol=20)


def test_palette_png_with_transparency_goes_over_black(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    path = save(img, tmp_path / "pal.png", transparency=0)
    arr, info = load_image_with_info(path)
    check_rgb(arr, (4, 4))
    assert info["original_mode"] == "P" and info["had_alpha"]
    assert arr[0, 0].tolist() == [0, 0, 0] and arr[2, 2].tolist() == [0, 255, 0]


@pytest.mark.parametrize("mode,value", [("L", 77), ("1", 255)])
def test_grayscale(tmp_path, mode, value):
    arr = load_image(save(Image.new(mode, (5, 3), value), tmp_path / f"gray{mode}.png"))
    check_rgb(arr, (3, 5))
    assert (arr == value).all()


def test_rgba_is_composited_onto_black(tmp_path):
    pixels = np.array([[[200, 100, 50, 255], [200, 100, 50, 128], [200, 100, 50, 0]]], np.uint8)
    arr, info = load_image_with_info(save(Image.fromarray(pixels, "RGBA"), tmp_path / "rgba.png"))
    assert info["had_alpha"]
    assert arr[0].tolist() == [[200, 100, 50], [100, 50, 25], [0, 0, 0]]


def test_16bit_png_is_scaled_by_its_own_range(tmp_path):
    values = np.array([[1000, 2000, 3000]], np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    arr, info = load_image_with_info(path)
    assert info["original_mode"].startswith("I")
    assert arr[0, :, 0].tolist() == [0, 128, 255]
    assert (arr[..., 0] == arr[..., 2]).all()


def test_animated_gif_gives_first_frame_and_frame_count(tmp_path):
    frames = [Image.new("RGB", (6, 6), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = save(frames[0], tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    arr, info = load_image_with_info(path)
    check_rgb(arr, (6, 6))
    assert info["frames"] == 3
    assert arr[0, 0].tolist() == [255, 0, 0]


def test_16bit_rgb_tiff_keeps_full_precision(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    pages = np.zeros((2, 4, 5, 3), np.uint16)  # two pages of 16-bit RGB, which PIL truncates to 8 bits
    pages[0, ..., 0] = 4000
    pages[0, 0, 0] = (1000, 1000, 1000)
    tifffile.imwrite(tmp_path / "rgb16.tif", pages, photometric="rgb")
    arr, info = load_image_with_info(tmp_path / "rgb16.tif")
    check_rgb(arr, (4, 5))
    assert info["frames"] == 2
    assert arr[1, 1].tolist() == [255, 0, 0] and arr[0, 0].tolist() == [64, 64, 64]


def test_bytes_file_object_and_pil_inputs(tmp_path):
    img = Image.new("RGB", (3, 2), (1, 2, 3))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    for source in (buffer.getvalue(), io.BytesIO(buffer.getvalue()), img):
        assert load_image(source).tolist() == np.full((2, 3, 3), (1, 2, 3)).tolist()


# ---- arrays -----------------------------------------------------------------------------------

@pytest.mark.parametrize("arr,expected", [
    (np.full((2, 3), 9, np.uint8), 9),
    (np.full((2, 3, 1), 9, np.uint8), 9),
    (np.full((2, 3, 3), 9, np.uint8), 9),
    (np.dstack([np.full((2, 3, 3), 200, np.uint8), np.full((2, 3), 255, np.uint8)]), 200),
    (np.full((2, 3), 0.5, np.float32), 128),  # floats in [0, 1] are fractions
])
def test_array_shapes(arr, expected):
    out = load_image(arr)
    check_rgb(out, (2, 3))
    assert (out == expected).all()


def test_arrays_outside_uint8_use_their_own_range():
    assert load_image(np.array([[100, 300]], np.uint16))[0, :, 0].tolist() == [0, 255]
    assert load_image(np.array([[-2.0, 0.0, 2.0]]))[0, :, 0].tolist() == [0, 128, 255]


def test_uint16_alpha_is_a_fraction_of_full_scale():
    rgba = np.zeros((1, 2, 4), np.uint16)
    rgba[..., :3] = [[0, 0, 0], [1000, 1000, 1000]]
    rgba[..., 3] = 65535
    assert load_image(rgba)[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("arr,reason", [
    (np.zeros((2, 3, 2), np.uint8), "expected HxW"),
    (np.zeros((1, 2, 3, 3), np.uint8), "expected HxW"),
    (np.zeros((0, 3, 3), np.uint8), "empty"),
    (np.zeros((2, 3), bool), "boolean"),
    (np.zeros((3, 20, 30), np.uint8), "channels-first"),
    (np.full((2, 2), np.nan), "NaN"),
])
def test_bad_arrays(arr, reason):
    with pytest.raises(ImageError, match=reason) as e:
        load_image(arr)
    assert str(arr.shape) in str(e.value)


def test_percentile_to_uint8():
    values = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = percentile_to_uint8(values, 1, 99)
    assert out.dtype == np.uint8 and out.shape == values.shape
    assert out.min() == 0 and out.max() == 255
    assert out[0, 5] == 0 and out[-1, -5] == 255  # clipped below 1% and above 99%
    assert percentile_to_uint8(np.full((2, 2), 7)).tolist() == [[0, 0], [0, 0]]


# ---- files that must fail, saying which file and why -------------------------------------------

def expect_error(path, reason, error=ImageError, **kwargs):
    with pytest.raises(error) as e:
        load_image(path, **kwargs)
    message = str(e.value)
    assert str(path) in message and reason in message, message


def png_bytes(size=(64, 64)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.png", "no such file")


def test_dangling_symlink(tmp_path):
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "gone.png")
    expect_error(link, "broken symbolic link")


def test_directory(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_zero_bytes(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    expect_error(tmp_path / "empty.jpg", "empty (0 bytes)")


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("hello, not an image\n")
    expect_error(tmp_path / "notes.png", "not an image")


def test_random_bytes(tmp_path):
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(1).bytes(500))
    expect_error(tmp_path / "noise.jpg", "not an image")


def test_truncated_png(tmp_path):
    data = png_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.png", "corrupt or truncated")


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    expect_error(tmp_path / "cut.jpg", "corrupt or truncated")


def test_corrupt_png_data(tmp_path):
    data = bytearray(png_bytes())
    start = data.index(b"IDAT") + 20
    data[start:start + 50] = bytes(50)  # damage the compressed pixels (and their checksum)
    (tmp_path / "bad.png").write_bytes(bytes(data))
    expect_error(tmp_path / "bad.png", "corrupt")


def test_decompression_bomb_limit(tmp_path):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    expect_error(path, "exceeds the limit of 5000 pixels", ImageTooLargeError, max_pixels=5000)
    assert load_image(path, max_pixels=None).shape == (100, 100, 3)


def test_unreadable_file(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (2, 2)), tmp_path / "secret.png")

    def denied(self):  # chmod 0 stops no one when the tests run as root
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", denied)
    expect_error(path, "permission denied")

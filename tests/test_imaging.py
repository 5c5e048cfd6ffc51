"""Safe decoding on real files: every good format and colour mode, every kind of bad file."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps
from pydantic import ValidationError

from coe.core.imaging import DecodeLimits, ImageDecodeError, decode_image_bytes, read_image
from coe.core.records import ErrorCode
from tests.bad_files import (
    FRAME_COLOURS,
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    TEST_LIMITS,
    animated_gif,
    encode,
    exif_rotated_jpeg,
    flat_bilevel_png,
    grey16_gradient,
    make_mixed_folder,
    mistyped_exif_jpeg,
    photo,
)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("mixed")
    return root, make_mixed_folder(root)


def decode_error(data: bytes, limits: DecodeLimits = DecodeLimits()) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError) as raised:
        decode_image_bytes(data, "upload.bin", limits)
    return raised.value


def tiff(image: Image.Image) -> bytes:
    return encode(image, "TIFF")


def test_every_good_file_decodes_to_upright_rgb(mixed: tuple[Path, dict[str, str | None]]) -> None:
    root, expected = mixed
    good = [name for name, code in expected.items() if code is None]
    assert len(good) >= 13
    for name in good:
        path = root / name
        decoded = read_image(path, TEST_LIMITS)
        assert decoded.pixels.shape == (IMAGE_HEIGHT, IMAGE_WIDTH, 3), name
        assert decoded.pixels.dtype == np.uint8, name
        assert decoded.pixels.flags.c_contiguous, name
        record = decoded.record
        assert (record.width, record.height) == (IMAGE_WIDTH, IMAGE_HEIGHT), name
        assert record.path == str(path)
        assert record.size_bytes == path.stat().st_size
        assert record.id == hashlib.sha256(path.read_bytes()).hexdigest()


def test_format_and_mode_come_from_content_not_extension(mixed: tuple[Path, dict[str, str | None]]) -> None:
    root, _ = mixed
    expected = {
        "photo.jpg": ("JPEG", "RGB"),
        "png_named.jpg": ("PNG", "RGB"),
        "photo.webp": ("WEBP", "RGB"),
        "photo.bmp": ("BMP", "RGB"),
        "photo.tif": ("TIFF", "RGB"),
        "animated.gif": ("GIF", "P"),
        "cmyk.jpg": ("JPEG", "CMYK"),
        "grey16.png": ("PNG", "I;16"),
        "grey_alpha.png": ("PNG", "LA"),
        "palette_transparent.png": ("PNG", "P"),
        "bilevel.png": ("PNG", "1"),
    }
    actual = {}
    for name in expected:
        record = read_image(root / name, TEST_LIMITS).record
        actual[name] = (record.format, record.mode)
    assert actual == expected


def test_every_bad_file_gets_its_code_and_a_message_naming_it(
    mixed: tuple[Path, dict[str, str | None]],
) -> None:
    root, expected = mixed
    bad = {name: code for name, code in expected.items() if code is not None}
    assert len(bad) >= 15
    actual = {}
    for name in bad:
        with pytest.raises(ImageDecodeError) as raised:
            read_image(root / name, TEST_LIMITS)
        actual[name] = raised.value.error.code
        assert str(root / name) in raised.value.error.message, raised.value.error.message
        assert str(raised.value) == raised.value.error.message
    assert actual == bad


def test_identical_files_share_an_id_and_different_files_do_not(
    mixed: tuple[Path, dict[str, str | None]],
) -> None:
    root, expected = mixed
    ids = {
        name: read_image(root / name, TEST_LIMITS).record.id
        for name, code in expected.items()
        if code is None
    }
    assert ids["photo.jpg"] == ids["copies/photo_copy.jpg"]
    assert len(set(ids.values())) == len(ids) - 1


def test_read_image_and_decode_image_bytes_agree(mixed: tuple[Path, dict[str, str | None]]) -> None:
    root, _ = mixed
    path = root / "photo.png"
    from_file = read_image(path)
    from_bytes = decode_image_bytes(path.read_bytes(), str(path))
    assert from_bytes.record == from_file.record
    np.testing.assert_array_equal(from_bytes.pixels, from_file.pixels)
    np.testing.assert_array_equal(from_file.pixels, np.asarray(photo()))  # PNG is lossless


def test_exif_orientation_6_turns_the_stored_picture_upright() -> None:
    displayed = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), np.uint8)
    displayed[..., 2] = 255  # blue everywhere ...
    displayed[:16, :16] = (255, 0, 0)  # ... but a red top-left corner
    decoded = decode_image_bytes(exif_rotated_jpeg(Image.fromarray(displayed)), "rotated.jpg")
    assert (decoded.record.width, decoded.record.height) == (IMAGE_WIDTH, IMAGE_HEIGHT)
    stored = Image.open(io.BytesIO(exif_rotated_jpeg(Image.fromarray(displayed))))
    assert stored.size == (IMAGE_HEIGHT, IMAGE_WIDTH)  # the file really holds it on its side
    np.testing.assert_allclose(decoded.pixels[4, 4], (255, 0, 0), atol=12)
    np.testing.assert_allclose(decoded.pixels[4, -4], (0, 0, 255), atol=12)
    np.testing.assert_allclose(decoded.pixels[-4, 4], (0, 0, 255), atol=12)


def test_16_bit_greyscale_keeps_the_top_byte(mixed: tuple[Path, dict[str, str | None]]) -> None:
    root, _ = mixed
    pixels = read_image(root / "grey16.png", TEST_LIMITS).pixels
    expected = (grey16_gradient() >> 8).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)
    assert pixels[0, -1, 0] == 255  # 65535 reaches white, not clipped earlier


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16_bit_tiff_of_either_byte_order_keeps_the_top_byte(mode: str) -> None:
    decoded = decode_image_bytes(tiff(Image.new(mode, (32, 32), 0xABCD)), "grey16.tif")
    assert decoded.record.mode == mode
    assert np.all(decoded.pixels == 0xAB)


def test_32_bit_integer_samples_scale_by_their_range() -> None:
    within_16_bits = np.full((32, 32), 0x1234, np.int32)
    assert np.all(decode_image_bytes(tiff(Image.fromarray(within_16_bits)), "i16.tif").pixels == 0x12)

    full_range = np.zeros((32, 32), np.int32)
    full_range[0, 0], full_range[0, 1] = np.iinfo(np.int32).min, np.iinfo(np.int32).max
    pixels = decode_image_bytes(tiff(Image.fromarray(full_range)), "i32.tif").pixels
    assert decode_image_bytes(tiff(Image.fromarray(full_range)), "i32.tif").record.mode == "I"
    assert (pixels[0, 0, 0], pixels[0, 1, 0], pixels[5, 5, 0]) == (0, 255, 128)


def test_float_samples_in_unit_range_scale_by_255_and_others_stretch() -> None:
    unit = np.full((32, 32), 0.5, np.float32)
    unit[0, 0] = 1.0
    pixels = decode_image_bytes(tiff(Image.fromarray(unit)), "unit.tif").pixels
    assert (pixels[0, 0, 0], pixels[1, 1, 0]) == (255, 128)

    wide = np.full((32, 32), 100.0, np.float32)
    wide[0, 0], wide[0, 1] = -100.0, 300.0
    pixels = decode_image_bytes(tiff(Image.fromarray(wide)), "wide.tif").pixels
    assert (pixels[0, 0, 0], pixels[0, 1, 0], pixels[1, 1, 0]) == (0, 255, 128)


def test_cmyk_jpeg_colours_come_out_roughly_right() -> None:
    picture = Image.new("RGB", (64, 64), (255, 0, 0))
    picture.paste((0, 0, 255), (32, 0, 64, 64))
    decoded = decode_image_bytes(encode(picture.convert("CMYK"), "JPEG", quality=95), "cmyk.jpg")
    assert decoded.record.mode == "CMYK"
    np.testing.assert_allclose(decoded.pixels[32, 8], (255, 0, 0), atol=10)
    np.testing.assert_allclose(decoded.pixels[32, 56], (0, 0, 255), atol=10)


def test_animated_gif_gives_its_first_frame() -> None:
    decoded = decode_image_bytes(animated_gif(), "animated.gif")
    assert decoded.record.format == "GIF"
    assert np.all(decoded.pixels == FRAME_COLOURS[0])


def test_mpo_is_read_as_jpeg_from_its_first_picture() -> None:
    first, second = Image.new("RGB", (64, 64), (250, 250, 250)), Image.new("RGB", (64, 64), (0, 0, 0))
    data = encode(first, "MPO", save_all=True, append_images=[second], quality=95)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode_image_bytes(data, "stereo.jpg")
    assert decoded.record.format == "JPEG"
    np.testing.assert_allclose(decoded.pixels, 250, atol=3)


def test_transparent_pixels_keep_their_stored_colour() -> None:
    rgba = Image.new("RGBA", (32, 32), (10, 200, 30, 0))
    assert np.all(decode_image_bytes(encode(rgba, "PNG"), "rgba.png").pixels == (10, 200, 30))

    grey_alpha = Image.new("LA", (32, 32), (77, 0))
    assert np.all(decode_image_bytes(encode(grey_alpha, "PNG"), "la.png").pixels == 77)

    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([200, 10, 10, 0, 0, 90])
    palette.putpixel((0, 0), 1)
    # Entry 0 fully transparent, entry 1 half transparent.
    decoded = decode_image_bytes(encode(palette, "PNG", transparency=bytes([0, 128])), "p.png")
    assert decoded.record.mode == "P"
    assert tuple(decoded.pixels[0, 0]) == (0, 0, 90)
    assert np.all(decoded.pixels[1:] == (200, 10, 10))


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "PA"])
def test_other_tiff_colour_modes_convert_to_rgb(mode: str) -> None:
    picture = Image.new("RGB", (32, 32), (200, 40, 90))
    source = picture.quantize(colors=4).convert("PA") if mode == "PA" else picture.convert(mode)
    decoded = decode_image_bytes(tiff(source), f"{mode}.tif")
    assert decoded.record.mode == mode
    np.testing.assert_allclose(decoded.pixels[16, 16], (200, 40, 90), atol=6)


def test_colour_mode_pillow_cannot_convert_is_unsupported() -> None:
    # A grey + alpha TIFF whose ExtraSamples tag says "associated alpha" opens as mode "La",
    # which Pillow cannot convert to RGB.
    data = tiff(Image.new("LA", (32, 32), (90, 255)))
    unassociated = b"\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00\x00\x00"  # tag 338 = 2
    assert data.count(unassociated) == 1
    error = decode_error(data.replace(unassociated, unassociated[:8] + b"\x01\x00\x00\x00"))
    assert error.error.code == ErrorCode.UNSUPPORTED_FORMAT
    assert "La" in error.error.message


def test_broken_exif_does_not_lose_the_image_nor_print_warnings(
    mixed: tuple[Path, dict[str, str | None]],
) -> None:
    root, _ = mixed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad_offset = read_image(root / "exif_bad_offset.jpg", TEST_LIMITS).pixels
        mistyped = read_image(root / "mistyped_exif6.jpg", TEST_LIMITS).pixels
    # Same pixel data as the files with sound EXIF blocks, so the decoded pixels are identical.
    np.testing.assert_array_equal(bad_offset, read_image(root / "photo.jpg", TEST_LIMITS).pixels)
    np.testing.assert_array_equal(mistyped, read_image(root / "rotated_exif6.jpg", TEST_LIMITS).pixels)


def test_mistyped_exif_really_makes_pillow_raise() -> None:
    # Guards the test above: if Pillow stops raising here, mistyped_exif6.jpg no longer
    # exercises the recovery path and needs another kind of damage.
    image = Image.open(io.BytesIO(mistyped_exif_jpeg(photo())))
    with pytest.raises(AttributeError):
        ImageOps.exif_transpose(image)


def test_flat_image_below_the_bomb_floor_decodes() -> None:
    data = flat_bilevel_png(2_000, 2_000)
    assert 4_000_000 / len(data) > DecodeLimits().max_pixels_per_byte
    assert decode_image_bytes(data, "blank.png").pixels.shape == (2_000, 2_000, 3)


def test_pillow_pixel_limit_becomes_our_error_without_a_warning() -> None:
    beyond_pillow_warning = flat_bilevel_png(10_000, 10_000)  # 100 million pixels
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000
    filters_before = list(warnings.filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bomb = decode_error(beyond_pillow_warning)
        too_large = decode_error(beyond_pillow_warning, DecodeLimits(max_pixels_per_byte=1e9))
    assert bomb.error.code == ErrorCode.DECOMPRESSION_BOMB
    assert too_large.error.code == ErrorCode.IMAGE_TOO_LARGE
    assert "10000x10000" in too_large.error.message
    assert warnings.filters == filters_before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_limits_checked_on_bytes_too() -> None:
    assert decode_error(b"").error.code == ErrorCode.EMPTY_FILE
    data = encode(photo(), "PNG")
    assert (
        decode_error(data, DecodeLimits(max_file_bytes=len(data) - 1)).error.code == ErrorCode.FILE_TOO_LARGE
    )
    assert decode_image_bytes(
        data, "ok.png", DecodeLimits(max_file_bytes=len(data))
    ).record.size_bytes == len(data)
    small_side = DecodeLimits(min_side=IMAGE_HEIGHT + 1)
    assert decode_error(data, small_side).error.code == ErrorCode.IMAGE_TOO_SMALL


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as missing:
        read_image(tmp_path / "absent.jpg")
    assert missing.value.error.code == ErrorCode.NOT_FOUND
    assert "absent.jpg" in missing.value.error.message

    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageDecodeError) as folder:
        read_image(tmp_path / "folder.png")
    assert folder.value.error.code == ErrorCode.NOT_REGULAR_FILE
    assert "directory" in folder.value.error.message


def test_decode_limits_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        DecodeLimits(max_pixel=10)


def test_a_png_whose_text_is_over_pillows_limit_is_decoded_without_its_text() -> None:
    from PIL import PngImagePlugin

    metadata = PngImagePlugin.PngInfo()
    metadata.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    metadata.add_text("short", "left out too, with the rest of the text")
    data = encode(photo(), "PNG", pnginfo=metadata)
    pixels = np.asarray(photo())
    decoded = decode_image_bytes(data, "text.png")
    assert np.array_equal(decoded.pixels, pixels)
    assert decoded.record.size_bytes == len(data) and decoded.record.id == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "named", "tool"),
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC/HEIF", "heif-convert"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), "AVIF", "avifdec"),
        (b"\xff\x0a\xfa\x7f" + bytes(64), "JPEG XL", "djxl"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + bytes(64), "JPEG XL", "djxl"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "SVG", "rsvg"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(64), "PDF", "pdftoppm"),
    ],
)
def test_formats_people_send_are_named_with_how_to_convert_them(data: bytes, named: str, tool: str) -> None:
    error = decode_error(data)
    assert error.error.code == ErrorCode.UNSUPPORTED_FORMAT
    assert named in error.error.message and tool in error.error.message and "convert it to PNG or JPEG" in error.error.message

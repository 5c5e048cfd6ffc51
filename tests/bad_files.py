"""A folder of good and deliberately broken files for the decoding, ingest and pipeline tests.

`make_mixed_folder(root)` writes it and returns {path relative to root: expected error code,
or None for a good image}. The expected codes hold when files are decoded with `TEST_LIMITS`.
Every good image displays as IMAGE_WIDTH x IMAGE_HEIGHT (the EXIF-rotated JPEGs are stored
on their side), so every good file decodes to pixels of shape (IMAGE_HEIGHT, IMAGE_WIDTH, 3).
A symlink loop to a folder (copies/back_to_root) is part of the folder but yields no path.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data

from coe.core.imaging import DecodeLimits
from coe.core.records import ErrorCode

IMAGE_WIDTH = 96
IMAGE_HEIGHT = 64

# Small limits so that "too large" files stay small and the folder is written in well under a second.
TEST_LIMITS = DecodeLimits(max_file_bytes=300_000, max_pixels=250_000)

EXIF_ORIENTATION_TAG = 0x0112
# Orientation 6: the stored picture must be turned 90 degrees clockwise to be displayed upright.
EXIF_ROTATE_CLOCKWISE = 6

IMAGE_DESCRIPTION_TAG = 0x010E  # text
X_RESOLUTION_TAG = 0x011A  # a rational number
RATIONAL_TYPE = 5

FRAME_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


def photo(width: int = IMAGE_WIDTH, height: int = IMAGE_HEIGHT) -> Image.Image:
    """A real photograph (scikit-image's astronaut), resized; deterministic."""
    return Image.fromarray(skimage_data.astronaut()).resize((width, height), Image.Resampling.LANCZOS)


def encode(image: Image.Image, format_name: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format_name, **options)
    return buffer.getvalue()


def grey16_gradient() -> np.ndarray:
    """A 16-bit ramp covering 0..65535 left to right, the same on every row."""
    row = np.linspace(0, 0xFFFF, IMAGE_WIDTH).round().astype(np.uint16)
    return np.tile(row, (IMAGE_HEIGHT, 1))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT), colour) for colour in FRAME_COLOURS]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg(displayed: Image.Image) -> bytes:
    """A JPEG storing `displayed` turned a quarter anticlockwise, with the EXIF tag that undoes it."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_CLOCKWISE
    return encode(displayed.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def mistyped_exif_jpeg(displayed: Image.Image) -> bytes:
    """Like `exif_rotated_jpeg`, but the EXIF block also holds a number (an XResolution entry
    whose tag id is damaged into ImageDescription) where text belongs. Pillow reads it, turns
    the pixels, then raises while rewriting the EXIF block."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = EXIF_ROTATE_CLOCKWISE
    exif[X_RESOLUTION_TAG] = 72.0
    block = exif.tobytes()
    x_resolution_entry = struct.pack(">HH", X_RESOLUTION_TAG, RATIONAL_TYPE)  # Pillow writes big-endian
    assert block.count(x_resolution_entry) == 1
    block = block.replace(x_resolution_entry, struct.pack(">HH", IMAGE_DESCRIPTION_TAG, RATIONAL_TYPE))
    return encode(displayed.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=block)


def flat_bilevel_png(width: int, height: int) -> bytes:
    """A one-colour 1-bit PNG written chunk by chunk: compresses ~8000 pixels into each byte
    without ever holding the pixels in memory, which is what a decompression bomb does."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then all-black packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_chunk_offset(png: bytes, kind: bytes) -> int:
    """Offset of the first byte of the payload of the first chunk of `kind`."""
    return png.index(kind) + len(kind)


def make_mixed_folder(root: Path) -> dict[str, str | None]:
    """Write 18 good images and 22 bad files under `root`; see the module docstring."""
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}  # ErrorCode members are strings

    def write(name: str, content: bytes, code: ErrorCode | None) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        expected[name] = code

    def link(name: str, target: str, code: ErrorCode) -> None:
        os.symlink(target, root / name)
        expected[name] = code

    picture = photo()
    jpeg = encode(picture, "JPEG", quality=90)
    png = encode(picture, "PNG")
    alpha = Image.linear_gradient("L").resize(picture.size)

    # Good files, one per format and per colour mode that needs its own conversion.
    write("photo.jpg", jpeg, None)
    write("copies/photo_copy.jpg", jpeg, None)  # same bytes as photo.jpg: a duplicate
    write("photo.png", png, None)
    write("photo.webp", encode(picture, "WEBP", quality=90), None)
    write("photo.bmp", encode(picture, "BMP"), None)
    write("photo.tif", encode(picture, "TIFF"), None)
    write("animated.gif", animated_gif(), None)
    write("png_named.jpg", encode(picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"), None)
    write("cmyk.jpg", encode(picture.convert("CMYK"), "JPEG", quality=90), None)
    write("grey.png", encode(picture.convert("L"), "PNG"), None)
    write("bilevel.png", encode(picture.convert("1"), "PNG"), None)
    write("grey16.png", encode(Image.fromarray(grey16_gradient()), "PNG"), None)
    write("rgba.png", encode(Image.merge("RGBA", (*picture.split(), alpha)), "PNG"), None)
    palette = picture.quantize(colors=64)
    write("palette_transparent.png", encode(palette, "PNG", transparency=0), None)
    write("grey_alpha.png", encode(Image.merge("LA", (picture.convert("L"), alpha)), "PNG"), None)
    write("rotated_exif6.jpg", exif_rotated_jpeg(picture), None)
    write("mistyped_exif6.jpg", mistyped_exif_jpeg(picture), None)
    # An EXIF block whose first directory offset points far past its end.
    exif_bad_offset = b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + b"\x00" * 8
    write(
        "exif_bad_offset.jpg",
        encode(picture, "JPEG", quality=90, exif=b"Exif\x00\x00" + exif_bad_offset),
        None,
    )

    # Not images at all.
    write("notes.txt", b"these are not the pixels you are looking for\n" * 4, ErrorCode.NOT_AN_IMAGE)
    write("page.jpg", b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>\n", ErrorCode.NOT_AN_IMAGE)
    write("random.png", np.random.default_rng(7).bytes(4096), ErrorCode.NOT_AN_IMAGE)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("photo.jpg", jpeg)
    write("archive.png", archive.getvalue(), ErrorCode.NOT_AN_IMAGE)
    write("empty.png", b"", ErrorCode.EMPTY_FILE)

    # Images whose bytes are damaged.
    write("truncated.jpg", jpeg[: len(jpeg) // 2], ErrorCode.TRUNCATED)
    write("truncated.png", png[: len(png) // 2], ErrorCode.TRUNCATED)
    gif = animated_gif()
    write("truncated.gif", gif[: len(gif) // 3], ErrorCode.TRUNCATED)
    ihdr_crc = _png_chunk_offset(png, b"IHDR") + 13
    write(
        "bad_crc.png",
        png[:ihdr_crc] + bytes(b ^ 0xFF for b in png[ihdr_crc : ihdr_crc + 4]) + png[ihdr_crc + 4 :],
        ErrorCode.CORRUPT,
    )
    idat = _png_chunk_offset(png, b"IDAT")
    write("bad_idat.png", png[:idat] + b"\xff" * 64 + png[idat + 64 :], ErrorCode.CORRUPT)
    write("jpeg_garbage.jpg", b"\xff\xd8\xff\xe0" + np.random.default_rng(11).bytes(2048), ErrorCode.CORRUPT)

    # Images refused by the limits before their pixels are decoded.
    write("bomb.png", flat_bilevel_png(20_000, 20_000), ErrorCode.DECOMPRESSION_BOMB)  # Pillow's own limit
    write("flat_bomb.png", flat_bilevel_png(5_000, 5_000), ErrorCode.DECOMPRESSION_BOMB)  # our ratio check
    write("too_many_pixels.jpg", encode(photo(600, 500), "JPEG", quality=80), ErrorCode.IMAGE_TOO_LARGE)
    write("too_big_file.jpg", jpeg + bytes(TEST_LIMITS.max_file_bytes), ErrorCode.FILE_TOO_LARGE)
    write("tiny.png", encode(photo(4, 4), "PNG"), ErrorCode.IMAGE_TOO_SMALL)

    # Images in formats Pillow reads but the detector does not accept.
    write("icon.ico", encode(photo(64, 64), "ICO"), ErrorCode.UNSUPPORTED_FORMAT)
    write("photo.ppm", encode(picture, "PPM"), ErrorCode.UNSUPPORTED_FORMAT)

    # Paths that are not readable regular files.
    link("broken_link.jpg", "no_such_target.jpg", ErrorCode.BROKEN_SYMLINK)
    link("loop.jpg", "loop.jpg", ErrorCode.UNREADABLE)
    link("null_device.jpg", os.devnull, ErrorCode.NOT_REGULAR_FILE)
    os.mkfifo(root / "pipe.jpg")
    expected["pipe.jpg"] = ErrorCode.NOT_REGULAR_FILE
    # A symlinked folder pointing back up: walking must terminate and list nothing through it.
    os.symlink("..", root / "copies" / "back_to_root")

    return expected

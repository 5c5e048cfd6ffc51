"""Safe image decoding: the one place where untrusted files become pixels.

Every check that can be made from the header (file size, format, pixel count, compression
ratio, minimum side) is made before any pixel is decoded, and every failure surfaces as an
`ImageDecodeError` with a stable `ErrorCode`, so one bad file in a folder of thousands costs
one error row, never the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from coe.core.names import readable
from coe.core.records import ErrorCode, ErrorInfo, ImageRecord

# Pillow format names we decode. MPO (multi-picture JPEG from phones and stereo cameras) is
# a JPEG whose first picture is an ordinary JPEG frame, so it is accepted and reported as JPEG.
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_REPORTED_FORMAT = {"MPO": "JPEG"}

# Pillow's parsers report malformed input through many exception types; all of them mean
# "these bytes are bad", not "the program is broken". MemoryError is deliberately absent.
_MALFORMED_INPUT_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ArithmeticError,
    NotImplementedError,
    struct.error,
)


class DecodeLimits(BaseModel):
    """What a file must satisfy before its pixels are decoded. Frozen, so that one instance
    can safely serve as a default argument and be shared between threads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_file_bytes: int = Field(100 * 2**20, gt=0)
    max_pixels: int = Field(80_000_000, gt=0)
    min_side: int = Field(32, ge=1)  # the residual expert compares 16 px patches at two scales
    # A decompression bomb is a tiny file that inflates to a huge pixel buffer. Real photos
    # compress to well under 100 pixels per byte and zlib cannot exceed ~1030 bytes of output
    # per byte of input, so ratios above this only come from flat, machine-made images.
    max_pixels_per_byte: float = Field(1000.0, gt=0)
    # Below this many pixels the decoded buffer is small enough that a flat image (a blank
    # canvas, a solid test pattern) is decoded whatever its compression ratio.
    bomb_min_pixels: int = Field(16_000_000, ge=0)


class ImageDecodeError(Exception):
    """A file that cannot be turned into pixels; `.error` is what goes into the output row."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error = ErrorInfo(code=code, message=message)


@dataclass(frozen=True)
class DecodedImage:
    record: ImageRecord
    pixels: np.ndarray  # (height, width, 3) uint8 RGB, C-contiguous, upright per EXIF


def read_image(path: str | Path, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode the image file at `path`; raises ImageDecodeError for anything unusable."""
    source = os.fspath(path)
    return decode_image_bytes(read_regular_file(source, limits), source, limits)


def decode_or_error(
    source: str | os.PathLike[str], decode: Callable[[], DecodedImage | ErrorInfo]
) -> DecodedImage | ErrorInfo:
    """What `decode()` returns (it reads and decodes `source`, or says why it cannot), or the error to record in its row
    instead: the ImageDecodeError's, or for any other exception an internal error, since a decoder
    bug must cost one image, not the run."""
    try:
        return decode()
    except ImageDecodeError as error:
        return error.error
    except Exception as error:
        message = readable(f"{os.fspath(source)}: {type(error).__name__}: {error}")
        return ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=message)


def decode_image_bytes(data: bytes, source: str, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode an image held in memory; `source` names it in the record and in error messages."""
    try:
        return _decode(data, data, source, limits)
    except _TextChunksTooLarge:
        # Pillow refuses PNG text past its memory limits (a guard against zlib bombs); the text is
        # metadata, so the pixels are decoded without it. The record still describes the file.
        return _decode(data, _without_png_text(data), source, limits)


class _TextChunksTooLarge(Exception):
    pass


def _raise_if_text_too_large(exc: BaseException) -> None:
    if isinstance(exc, ValueError) and ("MAX_TEXT_CHUNK" in str(exc) or "MAX_TEXT_MEMORY" in str(exc)):
        raise _TextChunksTooLarge from exc


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = {b"tEXt", b"zTXt", b"iTXt"}


def _without_png_text(data: bytes) -> bytes:
    """The PNG with its text chunks left out (every other chunk, CRC and all, as it was)."""
    kept = [data[: len(PNG_SIGNATURE)]]
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if kind not in PNG_TEXT_CHUNKS:
            kept.append(data[position:end])
        position = end
    kept.append(data[position:])
    return b"".join(kept)


def _decode(data: bytes, image_data: bytes, source: str, limits: DecodeLimits) -> DecodedImage:
    """`data` is the file, `image_data` what Pillow decodes (the same, or the file less its text)."""
    if not data:
        raise ImageDecodeError(ErrorCode.EMPTY_FILE, f"{source}: the file is empty")
    if len(data) > limits.max_file_bytes:
        raise ImageDecodeError(
            ErrorCode.FILE_TOO_LARGE,
            f"{source}: the file has {len(data)} bytes, over the limit of {limits.max_file_bytes}",
        )
    with warnings.catch_warnings():
        # Pillow warns about damaged metadata (corrupt EXIF, odd chunks) and about its own
        # global pixel limit. Damage that matters raises, and our configurable limits are
        # checked from the header below, so these warnings would only be printed noise, once
        # per file. (The filters are process-wide, not per thread; a concurrent decode can at
        # worst leave these two harmless filters installed.)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open_image(image_data, source) as image:
            format_name = _REPORTED_FORMAT.get(image.format, image.format)
            _check_header(image, format_name, len(data), source, limits)
            _load_pixels(image, format_name, source)
            _apply_exif_orientation(image)
            pixels = _to_rgb_array(image, source)
            stored_mode = image.mode
    record = ImageRecord(
        id=hashlib.sha256(data).hexdigest(),
        path=source,
        width=pixels.shape[1],
        height=pixels.shape[0],
        format=format_name,
        mode=stored_mode,
        size_bytes=len(data),
    )
    return DecodedImage(record=record, pixels=pixels)


def read_regular_file(source: str, limits: DecodeLimits = DecodeLimits()) -> bytes:
    """The bytes of the regular file at `source`, within the size limit; raises ImageDecodeError.
    For those who need the file's bytes besides its pixels (what the file says about its origin)."""
    # stat before open: opening a FIFO blocks until a writer appears, possibly forever.
    try:
        status = os.stat(source)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(source):
            raise ImageDecodeError(
                ErrorCode.BROKEN_SYMLINK, f"{source}: symbolic link to a file that does not exist"
            ) from None
        raise ImageDecodeError(ErrorCode.NOT_FOUND, f"{source}: no such file") from None
    except OSError as exc:
        raise ImageDecodeError(ErrorCode.UNREADABLE, f"{source}: cannot be read: {exc}") from None
    if not stat.S_ISREG(status.st_mode):
        raise ImageDecodeError(
            ErrorCode.NOT_REGULAR_FILE, f"{source}: is a {_file_kind(status.st_mode)}, not a regular file"
        )
    if status.st_size > limits.max_file_bytes:
        raise ImageDecodeError(
            ErrorCode.FILE_TOO_LARGE,
            f"{source}: the file has {status.st_size} bytes, over the limit of {limits.max_file_bytes}",
        )
    try:
        with open(source, "rb") as file:
            # One byte over the limit is enough to notice a file that grew since the stat.
            return file.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise ImageDecodeError(ErrorCode.UNREADABLE, f"{source}: cannot be read: {exc}") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _open_image(data: bytes, source: str) -> Image.Image:
    """Parse the header only (Image.open is lazy); no pixel is decoded here."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(ErrorCode.DECOMPRESSION_BOMB, f"{source}: {exc}") from None
    except (UnidentifiedImageError, *_MALFORMED_INPUT_ERRORS) as exc:
        _raise_if_text_too_large(exc)
        claimed_format = _format_by_signature(data)
        other_format = _unsupported_by_signature(data) if claimed_format is None else None
        if other_format is not None:
            name, conversion = other_format
            raise ImageDecodeError(
                ErrorCode.UNSUPPORTED_FORMAT,
                f"{source}: {name} is not a format coe decodes; convert it to PNG or JPEG first ({conversion})",
            ) from None
        if claimed_format is None:
            raise ImageDecodeError(
                ErrorCode.NOT_AN_IMAGE, f"{source}: not an image (no known image format recognised)"
            ) from None
        # UnidentifiedImageError only says "cannot identify image file <BytesIO ...>".
        reason = "" if isinstance(exc, UnidentifiedImageError) else f" ({exc})"
        raise ImageDecodeError(
            ErrorCode.CORRUPT,
            f"{source}: starts like a {claimed_format} file but its header is broken{reason}",
        ) from None


def _format_by_signature(data: bytes) -> str | None:
    """The accepted format whose signature (as Pillow itself checks it) `data` starts with."""
    Image.init()
    prefix = data[:16]  # as much as Image.open shows to the signature checks
    for format_name in ACCEPTED_FORMATS:
        if format_name in _REPORTED_FORMAT:
            continue  # Pillow has no opener of its own for it; it shares the JPEG signature
        _, accepts = Image.OPEN[format_name]
        # A check may answer with a string (a "plugin missing" note), which is not a match.
        if accepts is not None and accepts(prefix) is True:
            return _REPORTED_FORMAT.get(format_name, format_name)
    return None


# Formats people send that Pillow here cannot read: what they are, and how to convert them.
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def _unsupported_by_signature(data: bytes) -> tuple[str, str] | None:
    head = data[:1024]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF", "e.g. `heif-convert photo.heic photo.jpg` from libheif"
        if brand in _AVIF_BRANDS:
            return "AVIF", "e.g. `avifdec photo.avif photo.png` from libavif"
    if head.startswith(b"\xff\x0a") or head.startswith(b"\x00\x00\x00\x0cJXL \r\n\x87\n"):
        return "JPEG XL", "e.g. `djxl photo.jxl photo.png` from libjxl"
    if head.startswith(b"%PDF-"):
        return "PDF", "render its pages to images, e.g. `pdftoppm -png file.pdf page` from poppler"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in head.lower():
        return "SVG", "rasterise it, e.g. `rsvg-convert -o image.png image.svg` from librsvg"
    return None


def _check_header(
    image: Image.Image, format_name: str, size_bytes: int, source: str, limits: DecodeLimits
) -> None:
    if image.format not in ACCEPTED_FORMATS:
        raise ImageDecodeError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"{source}: {format_name} images are not supported "
            f"(accepted: {', '.join(sorted(set(ACCEPTED_FORMATS) - set(_REPORTED_FORMAT)))})",
        )
    width, height = image.size
    pixel_count = width * height
    pixels_per_byte = pixel_count / size_bytes
    if pixel_count >= limits.bomb_min_pixels and pixels_per_byte > limits.max_pixels_per_byte:
        raise ImageDecodeError(
            ErrorCode.DECOMPRESSION_BOMB,
            f"{source}: {width}x{height} pixels from only {size_bytes} bytes "
            f"({pixels_per_byte:.0f} pixels per byte) looks like a decompression bomb",
        )
    if pixel_count > limits.max_pixels:
        raise ImageDecodeError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"{source}: {width}x{height} is {pixel_count} pixels, over the limit of {limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise ImageDecodeError(
            ErrorCode.IMAGE_TOO_SMALL,
            f"{source}: {width}x{height} is smaller than the minimum side of {limits.min_side} pixels",
        )


def _load_pixels(image: Image.Image, format_name: str, source: str) -> None:
    # LOAD_TRUNCATED_IMAGES stays False: a truncated file is reported, never half-decoded.
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(ErrorCode.DECOMPRESSION_BOMB, f"{source}: {exc}") from None
    except _MALFORMED_INPUT_ERRORS as exc:
        _raise_if_text_too_large(exc)
        # Pillow says "image file is truncated" or "Truncated File Read" when data runs out.
        if "truncated" in str(exc).lower():
            raise ImageDecodeError(
                ErrorCode.TRUNCATED, f"{source}: the {format_name} file is truncated ({exc})"
            ) from None
        raise ImageDecodeError(
            ErrorCode.CORRUPT, f"{source}: the {format_name} image data is corrupt ({exc})"
        ) from None


def _apply_exif_orientation(image: Image.Image) -> None:
    # A broken EXIF block damages metadata, not pixels, and the pixels are already decoded,
    # so any failure here (Pillow raises even AttributeError on mistyped tags) keeps the
    # image. In-place transposition happens before the EXIF block is rewritten, so a failure
    # while rewriting still leaves correctly oriented pixels.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def _to_rgb_array(image: Image.Image, source: str) -> np.ndarray:
    if image.mode.startswith("I;16"):
        # Unsigned 16-bit samples: the top byte maps 0..65535 onto 0..255 without clipping.
        grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    elif image.mode == "I":
        grey = _int32_to_uint8(np.asarray(image))
    elif image.mode == "F":
        grey = _float_to_uint8(np.asarray(image))
    else:
        return np.ascontiguousarray(np.asarray(_to_rgb_image(image, source)), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, np.newaxis], 3, axis=2))


def _to_rgb_image(image: Image.Image, source: str) -> Image.Image:
    # Alpha (an alpha channel, or palette / colour-key transparency) is dropped, never
    # composited over a background: forensic experts must see the colour values exactly as
    # stored, including those under fully transparent pixels.
    if image.mode == "RGB":
        return image  # convert() would copy it
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(
            ErrorCode.UNSUPPORTED_FORMAT, f"{source}: colour mode {image.mode} is not supported ({exc})"
        ) from None


def _int32_to_uint8(values: np.ndarray) -> np.ndarray:
    # Mode "I" holds 32-bit samples, but Pillow also widens some 16-bit sources into it
    # (signed 16-bit TIFF, 16-bit PNG in older Pillow), so values that fit 16 bits are scaled
    # as 16-bit; anything else is scaled from the full int32 range.
    if values.min() >= 0 and values.max() <= 0xFFFF:
        return (values >> 8).astype(np.uint8)
    return ((values.astype(np.int64) + 2**31) >> 24).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    # Floats have no declared range: [0, 1] is the usual convention, anything else is
    # stretched from its own minimum to maximum (a constant image becomes black). NaN becomes 0.
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(finite.min()), float(finite.max())
    if low < 0.0 or high > 1.0:
        span = high - low
        finite = (finite - low) / span if span > 0 else np.zeros_like(finite)
    return np.round(finite * 255.0).astype(np.uint8)

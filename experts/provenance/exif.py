"""The EXIF tags provenance reads, by name, from a TIFF/EXIF blob (JPEG APP1, PNG eXIf, WebP
EXIF, a TIFF file's own IFDs). Generators write some of them where cameras do not (OpenAI puts its
MakerNote and UserComment in IFD0), so both IFD0 and the EXIF IFD are read."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

EXIF_IFD = 0x8769
TAGS = {
    0x010E: "ImageDescription",
    0x010F: "Make",
    0x0110: "Model",
    0x0131: "Software",
    0x013B: "Artist",
    0x8298: "Copyright",
    0x9003: "DateTimeOriginal",
    0x927C: "MakerNote",
    0x9286: "UserComment",
    0xA433: "LensMake",
    0xA434: "LensModel",
}
# UserComment starts with 8 bytes naming its character code (EXIF 2.3, table 9).
_USER_COMMENT_CODES = {b"ASCII\x00\x00\x00": "ascii", b"UNICODE\x00": "utf-16", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}


@dataclass
class ExifFields:
    values: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def get(self, name: str) -> str:
        return self.values.get(name, "")


def read_exif(blob: bytes | None) -> ExifFields:
    if not blob:
        return ExifFields()
    from PIL import Image

    exif = Image.Exif()
    try:
        # Pillow takes the JPEG/PNG form ("Exif\0\0" then TIFF) and a bare TIFF header alike; it
        # warns about what it skips in a corrupt one, which is this file's business, not the user's.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif.load(blob)
            directories = [exif, exif.get_ifd(EXIF_IFD)]
    except Exception as error:  # a malformed blob is a note, never a failure of the file
        return ExifFields(error=f"EXIF: {type(error).__name__}: {error}")
    values: dict[str, str] = {}
    for directory in directories:
        for tag, name in TAGS.items():
            if tag in directory and name not in values:
                text = _as_text(directory[tag], user_comment=tag == 0x9286)
                if text:
                    values[name] = text
    return ExifFields(values)


def _as_text(value, user_comment: bool) -> str:
    if isinstance(value, str):
        return value.strip("\x00 ").strip()
    if not isinstance(value, bytes):
        return ""
    if user_comment:
        return decode_user_comment(value)
    # MakerNote and friends: binary for cameras, text for some generators.
    text = value.rstrip(b"\x00")
    try:
        return text.decode("utf-8") if text.isascii() or _mostly_text(text) else ""
    except UnicodeDecodeError:
        return ""


def _mostly_text(raw: bytes) -> bool:
    sample = raw[:256]
    return sum(32 <= byte < 127 or byte in (9, 10, 13) for byte in sample) >= 0.95 * len(sample)


def decode_user_comment(raw: bytes) -> str:
    """UserComment's text: its 8-byte code, then the text; writers disagree on UTF-16's byte order
    (piexif, which AUTOMATIC1111 uses, writes big-endian), so the order is read off the zeros."""
    code = _USER_COMMENT_CODES.get(raw[:8])
    body = raw[8:] if code or raw[:8] == b"\x00" * 8 else raw
    if code == "utf-16":
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        text = body.decode("utf-16-be" if even_zeros >= odd_zeros else "utf-16-le", errors="replace")
    elif code == "shift_jis":
        text = body.decode("shift_jis", errors="replace")
    else:
        text = body.decode("utf-8", errors="replace")
    return text.strip("\x00 ").strip()

"""The metadata a file's container holds, read from its structure alone: PNG chunks, JPEG
segments, RIFF (WebP) chunks. Nothing after the container's end (PNG IEND, JPEG EOI, the RIFF
size) is read, so bytes appended to a file cannot add evidence; and every piece is capped
(`ContainerLimits`), so a huge chunk or a compressed text bomb costs a bounded time and memory."""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_KEYWORD = "XML:com.adobe.xmp"
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_EXTENDED_XMP = b"http://ns.adobe.com/xmp/extension/\x00"
# JPEG markers that stand alone, without a length: TEM, RST0-7, SOI.
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD8), 0xD8}


class ContainerLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_text_bytes: int = Field(
        default=4 << 20, ge=1024,
        description="the most bytes one text, EXIF or XMP piece may hold, compressed or not: a ComfyUI workflow "
        "is tens to hundreds of KB; a longer one is cut at this length",
    )
    max_total_text_bytes: int = Field(
        default=16 << 20, ge=1024, description="the most text kept from one file, all pieces together"
    )
    max_pieces: int = Field(
        default=200_000, ge=16, description="the most chunks or segments walked: a file of more is read that far"
    )


@dataclass
class Container:
    """What a file's structure held. `end` is where the container ends (the file's length when
    its format is not one read here); `notes` say what was cut or could not be read."""

    format: str
    end: int
    texts: dict[str, str] = field(default_factory=dict)
    exif: bytes | None = None
    xmp: list[str] = field(default_factory=list)
    quantization_tables: dict[int, tuple[int, ...]] = field(default_factory=dict)
    has_c2pa: bool = False
    notes: list[str] = field(default_factory=list)


_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"}


def sniff_format(data: bytes) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return "avif" if brand in (b"avif", b"avis") else "heic" if brand in _HEIF_BRANDS else "other"
    return "other"


def read_container(data: bytes, limits: ContainerLimits) -> Container:
    kind = sniff_format(data)
    reader = {"png": _read_png, "jpeg": _read_jpeg, "webp": _read_webp}.get(kind)
    if reader is None:
        # TIFF keeps its tags in the file's own IFDs, which the EXIF reader understands.
        container = Container(format=kind, end=len(data))
        if kind == "tiff":
            container.exif = data[: limits.max_text_bytes]
        return container
    return reader(memoryview(data), _Budget(limits))


class _Budget:
    """The text a file may still add, and what was cut."""

    def __init__(self, limits: ContainerLimits):
        self.limits = limits
        self.left = limits.max_total_text_bytes
        self.notes: list[str] = []

    def take(self, what: str, raw: bytes | memoryview) -> bytes:
        keep = min(len(raw), self.limits.max_text_bytes, self.left)
        if keep < len(raw):
            self.notes.append(f"{what}: {len(raw)} bytes, read {keep}")
        self.left -= keep
        return bytes(raw[:keep])

    def inflate(self, what: str, compressed: bytes | memoryview) -> bytes:
        """zlib text, decompressed no further than the budget allows: a bomb stops at its cap."""
        cap = min(self.limits.max_text_bytes, self.left)
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(bytes(compressed[: self.limits.max_text_bytes]), cap)
        except zlib.error as error:
            self.notes.append(f"{what}: not valid zlib data ({error})")
            return b""
        if inflater.unconsumed_tail:
            self.notes.append(f"{what}: decompresses past {cap} bytes, read {cap}")
        self.left -= len(text)
        return text


def _read_png(data: memoryview, budget: _Budget) -> Container:
    container = Container(format="png", end=len(data))
    position = len(PNG_SIGNATURE)
    for _ in range(budget.limits.max_pieces):
        if position + 8 > len(data):
            container.notes.append("PNG ends before IEND")
            break
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if position + 12 + length > len(data):
            container.notes.append(f"PNG chunk {kind!r} runs past the end of the file, not read")
            break
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IEND":
            container.end = min(position, len(data))
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            _png_text(kind, body, container, budget)
        elif kind == b"eXIf":
            container.exif = budget.take("PNG eXIf", body)
        elif kind == b"caBX":
            container.has_c2pa = True
    else:
        container.notes.append(f"more than {budget.limits.max_pieces} PNG chunks, read that many")
    container.notes += budget.notes
    return container


def _png_text(kind: bytes, body: memoryview, container: Container, budget: _Budget) -> None:
    keyword, separator, _ = bytes(body[:80]).partition(b"\x00")
    if not separator:
        container.notes.append(f"PNG {kind.decode()}: no keyword")
        return
    name = keyword.decode("latin-1")
    payload = body[len(keyword) + 1 :]
    what = f"PNG {kind.decode()} {name!r}"
    if kind == b"tEXt":
        text = budget.take(what, payload).decode("latin-1")
    elif kind == b"zTXt":
        text = budget.inflate(what, payload[1:]).decode("latin-1")
    else:
        compressed = len(payload) > 0 and payload[0] == 1
        # After the flags: a language tag and a translated keyword, each ended by NUL.
        head = bytes(payload[2:1024])
        parts = head.split(b"\x00", 2)
        if len(parts) < 3:
            container.notes.append(f"{what}: malformed")
            return
        offset = 2 + len(parts[0]) + len(parts[1]) + 2
        raw = budget.inflate(what, payload[offset:]) if compressed else budget.take(what, payload[offset:])
        text = raw.decode("utf-8", errors="replace")
    if name == _XMP_KEYWORD:
        container.xmp.append(text)
    elif name.startswith("Raw profile type") and name.lower().endswith(("exif", "app1")):
        # ImageMagick keeps EXIF as hex text: a blank line, a name, a length, then the hex digits.
        container.exif = container.exif or _imagemagick_profile(text)
    else:
        # A key seen twice keeps its first value, as readers of PNG text do.
        container.texts.setdefault(name, text)


def _imagemagick_profile(text: str) -> bytes | None:
    lines = text.strip().split("\n", 2)
    if len(lines) < 3:
        return None
    try:
        blob = bytes.fromhex(re.sub(r"\s+", "", lines[2]))
    except ValueError:
        return None
    return blob if blob.startswith((b"Exif\x00\x00", b"II*\x00", b"MM\x00*")) else None


def _read_jpeg(data: memoryview, budget: _Budget) -> Container:
    container = Container(format="jpeg", end=len(data))
    extended_xmp: dict[bytes, dict[int, bytes]] = {}
    position = 2
    for _ in range(budget.limits.max_pieces):
        if position + 2 > len(data):
            container.notes.append("JPEG ends before EOI")
            break
        if data[position] != 0xFF:
            container.notes.append(f"JPEG: no marker at byte {position}")
            break
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD9:
            container.end = position + 2
            break
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if position + 4 > len(data):
            container.notes.append("JPEG ends inside a segment header")
            break
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        body = data[position + 4 : position + 2 + length]
        position += 2 + length
        if marker == 0xE1:
            _jpeg_app1(body, container, extended_xmp, budget)
        elif marker == 0xEB and bytes(body[:2]) == b"JP":
            container.has_c2pa = True
        elif marker == 0xFE:
            container.texts.setdefault("comment", budget.take("JPEG comment", body).decode("latin-1"))
        elif marker == 0xDB:
            _jpeg_quantization_tables(body, container)
        elif marker == 0xDA:
            position = _end_of_scan(data, position)
    else:
        container.notes.append(f"more than {budget.limits.max_pieces} JPEG segments, read that many")
    for pieces in extended_xmp.values():
        container.xmp.append(b"".join(pieces[offset] for offset in sorted(pieces)).decode("utf-8", errors="replace"))
    container.notes += budget.notes
    return container


def _jpeg_app1(body: memoryview, container: Container, extended: dict, budget: _Budget) -> None:
    head = bytes(body[:40])
    if head.startswith(b"Exif\x00\x00") and container.exif is None:
        container.exif = budget.take("JPEG EXIF", body)
    elif head.startswith(_JPEG_XMP):
        container.xmp.append(budget.take("JPEG XMP", body[len(_JPEG_XMP) :]).decode("utf-8", errors="replace"))
    elif head.startswith(_JPEG_EXTENDED_XMP):
        # Extended XMP: a GUID (32), the full length (4) and this piece's offset (4), then the piece.
        start = len(_JPEG_EXTENDED_XMP)
        guid = bytes(body[start : start + 32])
        if len(body) >= start + 40:
            offset = struct.unpack(">I", body[start + 36 : start + 40])[0]
            extended.setdefault(guid, {})[offset] = budget.take("JPEG extended XMP", body[start + 40 :])


def _jpeg_quantization_tables(body: memoryview, container: Container) -> None:
    position = 0
    while position < len(body):
        precision, table_id = body[position] >> 4, body[position] & 0x0F
        size = 128 if precision else 64
        values = body[position + 1 : position + 1 + size]
        if len(values) < size:
            return
        container.quantization_tables[table_id] = (
            struct.unpack(">64H", values) if precision else tuple(values)
        )
        position += 1 + size


def _end_of_scan(data: memoryview, position: int) -> int:
    """The position of the marker that ends the entropy-coded data starting at `position`: the
    first 0xFF followed by neither a stuffed zero nor a restart marker."""
    raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
    while True:
        found = raw.find(b"\xff", position)
        if found < 0 or found + 1 >= len(raw):
            return len(raw)
        following = raw[found + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position = found + 1
            continue
        return found


def _read_webp(data: memoryview, budget: _Budget) -> Container:
    riff_size = struct.unpack("<I", data[4:8])[0]
    end = min(8 + riff_size, len(data))
    container = Container(format="webp", end=end)
    position = 12
    for _ in range(budget.limits.max_pieces):
        if position + 8 > end:
            break
        kind, size = struct.unpack("<4sI", data[position : position + 8])
        body = data[position + 8 : min(position + 8 + size, end)]
        position += 8 + size + (size & 1)
        if kind == b"EXIF":
            blob = budget.take("WebP EXIF", body)
            container.exif = container.exif or blob
        elif kind == b"XMP ":
            container.xmp.append(budget.take("WebP XMP", body).decode("utf-8", errors="replace"))
        elif kind == b"C2PA":
            container.has_c2pa = True
    else:
        container.notes.append(f"more than {budget.limits.max_pieces} RIFF chunks, read that many")
    container.notes += budget.notes
    return container

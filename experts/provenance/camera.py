"""Camera hints: EXIF make, model, lens and capture time, and whether a JPEG's quantization tables
are libjpeg's standard ones scaled to a quality (software encoded: Pillow, most web tools and
every generator's JPEG) rather than a camera's own. Weak hints only: one command writes any EXIF,
and FLUX and Fooocus write a Make or MakerNote themselves."""

from __future__ import annotations

import numpy as np

from coe.core.records import ProvenanceFinding
from experts.provenance.exif import ExifFields
from experts.provenance.generators import truncated

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance), in natural (row) order.
_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])
_CHROMINANCE = np.full(64, 99)
_CHROMINANCE[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]
# Generator makes that are no camera: theirs is a generator claim, read elsewhere.
_GENERATOR_MAKES = ("Black Forest Labs", "prompt:", "workflow:")


def _zigzag() -> np.ndarray:
    """The natural-order index of each position in JPEG's zigzag scan, the order DQT stores."""
    cells = sorted(((row, column) for row in range(8) for column in range(8)),
                   key=lambda cell: (cell[0] + cell[1], cell[1] if (cell[0] + cell[1]) % 2 == 0 else cell[0]))
    return np.array([row * 8 + column for row, column in cells])


def _libjpeg_tables() -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """libjpeg's `jpeg_set_quality` tables for each quality 1-100, in zigzag order."""
    order = _zigzag()
    tables = {}
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        luminance, chrominance = (np.clip((base * scale + 50) // 100, 1, 255)[order] for base in (_LUMINANCE, _CHROMINANCE))
        tables[quality] = (luminance, chrominance)
    return tables


_STANDARD = _libjpeg_tables()


def libjpeg_quality(tables: dict[int, tuple[int, ...]]) -> int | None:
    """The quality whose standard tables these are; None for tables that are not libjpeg's."""
    if 0 not in tables:
        return None
    luminance = np.asarray(tables[0])
    chrominance = np.asarray(tables[1]) if 1 in tables else None
    for quality, (standard_luminance, standard_chrominance) in _STANDARD.items():
        if np.array_equal(luminance, standard_luminance) and (
            chrominance is None or np.array_equal(chrominance, standard_chrominance)
        ):
            return quality
    return None


def camera_findings(exif: ExifFields, tables: dict[int, tuple[int, ...]], where: str) -> list[ProvenanceFinding]:
    findings = []
    make, model = exif.get("Make"), exif.get("Model")
    if (make or model) and not make.startswith(_GENERATOR_MAKES):
        fields = {name.lower(): truncated(exif.get(name)) for name in
                  ("Make", "Model", "LensMake", "LensModel", "DateTimeOriginal", "Software") if exif.get(name)}
        camera = " ".join(part for part in (make, model) if part)
        findings.append(ProvenanceFinding(
            source="camera_exif", grade="hint", says="captured", generator=None,
            detail=f"{where} EXIF names a camera, {camera}" + (
                f", captured {exif.get('DateTimeOriginal')}" if exif.get("DateTimeOriginal") else ""
            ) + " (unsigned: anyone can write it)",
            fields=fields,
        ))
    quality = libjpeg_quality(tables) if tables else None
    if quality is not None:
        findings.append(ProvenanceFinding(
            source="jpeg_tables", grade="hint", says="edited",
            detail=f"the JPEG tables are libjpeg's standard ones at quality {quality}: encoded by software, "
            "not as a camera saves its own",
            fields={"libjpeg_quality": str(quality)},
        ))
    return findings

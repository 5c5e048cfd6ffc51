"""The invisible watermarks Stable Diffusion's reference code embeds with the invisible-watermark
package's `dwtDct` method: the bytes "StableDiffusionV1" (SD 1.x) or "SDV2" (SD 2.x), and 48 bits
0xB3EC907BB19E (SDXL). Decoded here with numpy alone: the package itself pulls OpenCV and
onnxruntime for a few lines of arithmetic.

How it works: the image's U plane (BGR -> YUV), one level of Haar DWT, the approximation cut into
4x4 blocks; in each block the largest coefficient after the first carries one bit in where its
magnitude falls modulo 36 (above half: 1). Bit k of an L-bit payload is the majority over
blocks k, k+L, k+2L, ... It survives lossless files at their original size only: JPEG and any
resize scramble it (bit error near 0.5, what unmarked images give), so a hit is a weak hint."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coe.core.records import ProvenanceFinding

SCALE = 36.0
BLOCK = 4
_SDXL_BITS = np.array([int(bit) for bit in f"{0xB3EC907BB19E:048b}"], dtype=np.uint8)
PAYLOADS: dict[str, np.ndarray] = {
    "StableDiffusionV1": np.unpackbits(np.frombuffer(b"StableDiffusionV1", dtype=np.uint8)),
    "SDV2": np.unpackbits(np.frombuffer(b"SDV2", dtype=np.uint8)),
    "SDXL": _SDXL_BITS,
}
# How each payload's encoder saw the image, (swapped, eight_bit): SD 1/2's scripts convert to BGR
# uint8; SDXL's reference code hands over BGR floats, diffusers RGB floats as if BGR.
_VARIANTS: dict[str, tuple[tuple[bool, bool], ...]] = {
    "StableDiffusionV1": ((False, True),),
    "SDV2": ((False, True),),
    "SDXL": ((False, False), (True, False)),
}
GENERATORS = {"StableDiffusionV1": "Stable Diffusion 1.x", "SDV2": "Stable Diffusion 2.x", "SDXL": "Stable Diffusion XL"}
# OpenCV's YUV: U = 0.492 (B - Y) + delta, delta 128 for 8-bit images and 0.5 for float ones.
_U_FROM_B = 0.492
# Formats the watermark can survive in (a lossy WebP is decoded too, and misses as a JPEG does).
LOSSLESS_FORMATS = ("png", "bmp", "tiff", "webp")


class WatermarkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(default=False, description="decode the watermarks (decodes the pixels of lossless files)")
    max_bit_error: float = Field(
        default=0.15, gt=0.0, lt=0.5,
        description="a payload decoded with at most this share of wrong bits is a hit: marked PNGs measure "
        "0.00-0.14, JPEG q90 or any resize 0.4 or more, unmarked photos 0.25 or more",
    )
    max_pixels: int = Field(default=4_200_000, ge=65_536, description="larger images are not decoded: "
                            "the watermark survives only at the generator's own output size")


@dataclass
class WatermarkRead:
    payload: str
    bit_error: float
    variant: str


def u_plane(rgb: np.ndarray, swapped: bool, eight_bit: bool) -> np.ndarray:
    """The U plane an encoder saw. SD 1/2 hand OpenCV a BGR uint8 image; SDXL a float one, in BGR
    (the reference code) or RGB taken as BGR (diffusers), hence `swapped`."""
    pixels = rgb.astype(np.float32)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    if swapped:
        red, blue = blue, red
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    u = _U_FROM_B * (blue - luma)
    return np.clip(np.round(u + 128.0), 0, 255) if eight_bit else u + 0.5


def block_bits(u: np.ndarray) -> np.ndarray:
    """One bit per 4x4 block of the U plane's Haar approximation, in the encoder's (row-major) order."""
    rows, columns = (u.shape[0] // 4) * 4, (u.shape[1] // 4) * 4
    plane = u[:rows, :columns]
    # The orthonormal Haar approximation of each 2x2 cell is half its sum.
    approximation = (plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]) / 2.0
    block_rows, block_columns = approximation.shape[0] // BLOCK, approximation.shape[1] // BLOCK
    blocks = (
        approximation[: block_rows * BLOCK, : block_columns * BLOCK]
        .reshape(block_rows, BLOCK, block_columns, BLOCK)
        .transpose(0, 2, 1, 3)
        .reshape(-1, BLOCK * BLOCK)
    )
    magnitudes = np.abs(blocks[:, 1:])
    carrier = magnitudes[np.arange(len(blocks)), np.argmax(magnitudes, axis=1)]
    return (np.mod(carrier, SCALE) > SCALE / 2).astype(np.uint8)


def payload_bit_error(bits: np.ndarray, payload: np.ndarray) -> float:
    length = len(payload)
    if len(bits) < length:
        return 0.5
    # The encoder's majority: block n votes for bit n mod L; a mean above 127/255 decodes as 1.
    index = np.arange(len(bits)) % length
    votes = np.bincount(index, weights=bits, minlength=length) / np.bincount(index, minlength=length)
    decoded = (votes * 255 > 127).astype(np.uint8)
    return float(np.mean(decoded != payload))


def decode(rgb: np.ndarray) -> list[WatermarkRead]:
    """The bit error of each payload, under the encoding variant that fits it best."""
    planes = {variant: block_bits(u_plane(rgb, *variant)) for variant in {v for vs in _VARIANTS.values() for v in vs}}
    reads = []
    for name, payload in PAYLOADS.items():
        errors = {variant: payload_bit_error(planes[variant], payload) for variant in _VARIANTS[name]}
        swapped, eight_bit = best = min(errors, key=errors.get)
        reads.append(WatermarkRead(name, errors[best], f"{'RGB-as-BGR' if swapped else 'BGR'} "
                                   f"{'uint8' if eight_bit else 'float'}"))
    return reads


def watermark_finding(rgb: np.ndarray, params: WatermarkParams) -> ProvenanceFinding | None:
    reads = decode(rgb)
    hit = min(reads, key=lambda read: read.bit_error)
    if hit.bit_error > params.max_bit_error:
        return None
    return ProvenanceFinding(
        source="watermark", grade="hint", says="generated", generator=GENERATORS[hit.payload],
        detail=f"the {GENERATORS[hit.payload]} invisible watermark ({hit.payload!r}, dwtDct) decodes with "
        f"{hit.bit_error:.0%} bit error (unsigned, and unmarked images can come close)",
        fields={"payload": hit.payload, "bit_error": f"{hit.bit_error:.3f}", "variant": hit.variant},
    )

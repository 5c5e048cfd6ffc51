"""NovelAI's signature: its `Comment` JSON carries `signed_hash`, an ed25519 signature over the
image's RGB pixel bytes followed by the Comment re-serialised without `signed_hash` (Python's
json.dumps defaults, as NovelAI's own verifier `nai_sig.py` writes it). Verified with NovelAI's
published public key (from github.com/NovelAI/novelai-image-metadata), it is proof that NovelAI
generated these exact pixels; changed pixels or settings, or another key, fail."""

from __future__ import annotations

import base64
import io
import json

import numpy as np

from coe.core.records import ProvenanceFinding
from experts.provenance.generators import truncated

NOVELAI_PUBLIC_KEY = "Y2JcQAOhLwzwSDUJPNgL04nS0Tbqm7cSRc4xk0vRMic="  # base64 of the 32-byte ed25519 key


def signed_comment(comment_text: str) -> dict | None:
    if '"signed_hash"' not in comment_text:
        return None
    try:
        comment = json.loads(comment_text)
    except (ValueError, RecursionError):
        return None
    return comment if isinstance(comment, dict) and isinstance(comment.get("signed_hash"), str) else None


def rgb_bytes(data: bytes, max_pixels: int) -> bytes | None:
    """The decoded image's first three channels, row by row, as NovelAI signs them."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > max_pixels:
            return None
        pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return None
    return np.ascontiguousarray(pixels[:, :, :3]).tobytes()


def verify_signature(data: bytes, comment: dict, public_key: str, max_pixels: int) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    unsigned = {key: value for key, value in comment.items() if key != "signed_hash"}
    pixels = rgb_bytes(data, max_pixels)
    if pixels is None:
        return False
    try:
        signature = base64.b64decode(comment["signed_hash"], validate=True)
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key))
        key.verify(signature, pixels + json.dumps(unsigned).encode("utf-8"))
    except (InvalidSignature, ValueError):
        return False
    return True


def signature_finding(data: bytes, comment: dict, public_key: str, max_pixels: int, model: str | None) -> ProvenanceFinding:
    fields = {"signed_hash": truncated(comment["signed_hash"]), "public_key": public_key}
    if verify_signature(data, comment, public_key, max_pixels):
        return ProvenanceFinding(
            source="novelai", grade="proof", says="generated", generator="NovelAI", model=model,
            signer="NovelAI", detail="NovelAI's ed25519 signature over these pixels and settings verifies "
            "with NovelAI's published key: NovelAI generated this image", fields=fields,
        )
    return ProvenanceFinding(
        source="novelai", grade="none", says="unknown", generator="NovelAI", model=model,
        detail="a NovelAI signature that does not verify (pixels or settings changed since signing, "
        "or another key signed them)", fields=fields,
    )

"""Files carrying provenance, made on the spot for the tests and benchmarks.scripts.provenance_speed: PNGs
with each generator's chunks, JPEGs with EXIF and XMP, Stable Diffusion's invisible watermark
embedded as its encoder does, and C2PA manifests signed by a throwaway certificate authority
(root -> intermediate -> signer) that only a test trust list trusts."""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from skimage import data as pictures

A1111_PARAMETERS = (
    "a lighthouse at dusk, highly detailed\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 512x512, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "detail: 0a1b2c", Version: v1.9.4'
)
FORGE_PARAMETERS = A1111_PARAMETERS.replace("Version: v1.9.4", "Version: f2.0.1v1.10.1-previous-313")
COMFYUI_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "model": ["4", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}},
}
COMFYUI_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}, {"id": 4, "type": "CheckpointLoaderSimple"}]}
INVOKEAI_METADATA = {"generation_mode": "txt2img", "positive_prompt": "a cat", "app_version": "4.2.0",
                     "model": {"name": "juggernautXL_v9", "base": "sdxl", "type": "main"}}
FOOOCUS_PARAMETERS = {"prompt": "a cat", "base_model": "juggernautXL_v8Rundiffusion.safetensors",
                      "version": "Fooocus v2.5.5", "steps": 30}
MIDJOURNEY_DESCRIPTION = "a red fox in the snow --ar 3:2 --v 6.1 Job ID: 5c4a4f2e-8d4b-4e0e-9c63-2a3b8a1f7e21"
IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def photo(size: int = 256) -> np.ndarray:
    """A real photograph (scikit-image's astronaut), cropped to size x size."""
    return np.ascontiguousarray(pictures.astronaut()[:size, :size])


def png_bytes(pixels: np.ndarray, text: dict[str, str] | None = None, compressed: tuple[str, ...] = (),
              international: tuple[str, ...] = (), exif: bytes | None = None) -> bytes:
    """A PNG with tEXt chunks, or zTXt for the keys in `compressed`, iTXt for `international`."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        if key in international:
            info.add_itxt(key, value, zip=key in compressed)
        else:
            info.add_text(key, value, zip=key in compressed)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", pnginfo=info, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def exif_bytes(ifd0: dict[int, object] | None = None, exif_ifd: dict[int, object] | None = None) -> bytes:
    exif = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        exif[tag] = value
    if exif_ifd:
        sub = exif.get_ifd(0x8769)
        for tag, value in exif_ifd.items():
            sub[tag] = value
    return exif.tobytes()


def jpeg_bytes(pixels: np.ndarray, exif: bytes | None = None, quality: int = 90, xmp: str | None = None,
               qtables: list[list[int]] | None = None) -> bytes:
    buffer = io.BytesIO()
    options: dict = {"quality": quality}
    if exif:
        options["exif"] = exif
    if xmp:
        options["xmp"] = xmp.encode("utf-8")
    if qtables:
        options = {"qtables": qtables, **({"exif": exif} if exif else {})}
    Image.fromarray(pixels).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def webp_bytes(pixels: np.ndarray, exif: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "WEBP", lossless=True, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def user_comment(text: str, encoding: str = "unicode") -> bytes:
    """EXIF UserComment as piexif (AUTOMATIC1111's writer) encodes it."""
    if encoding == "unicode":
        return b"UNICODE\x00" + text.encode("utf-16-be")
    return b"ASCII\x00\x00\x00" + text.encode("ascii")


def xmp_packet(digital_source_type: str | None = None, ai_system: str | None = None,
               description: str | None = None, provenance: str | None = None) -> str:
    attributes = []
    if digital_source_type:
        attributes.append(f'Iptc4xmpExt:DigitalSourceType="{SOURCE_TYPE}{digital_source_type}"')
    if ai_system:
        attributes.append(f'Iptc4xmpExt:AISystemUsed="{ai_system}"')
    if provenance:
        attributes.append(f'dcterms:provenance="{provenance}"')
    body = (f"<dc:description><rdf:Alt><rdf:li xml:lang=\"x-default\">{description}</rdf:li></rdf:Alt></dc:description>"
            if description else "")
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_EXT}" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        f'xmlns:dcterms="http://purl.org/dc/terms/" {" ".join(attributes)}>{body}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


# --- Stable Diffusion's invisible watermark, embedded as invisible-watermark's dwtDct encoder does ---


def embed_watermark(rgb: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """SD 1/2's way: the image in BGR uint8 to OpenCV's YUV, the U plane's Haar approximation cut
    into 4x4 blocks, and in each block the largest coefficient after the first moved to the quarter
    (bit 0) or three quarters (bit 1) of its 36-wide cell; then back to RGB uint8."""
    pixels = rgb.astype(np.float64)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    u = np.clip(np.round(0.492 * (blue - luma) + 128), 0, 255)
    v = np.clip(np.round(0.877 * (red - luma) + 128), 0, 255)
    rows, columns = (u.shape[0] // 4) * 4, (u.shape[1] // 4) * 4
    plane = u[:rows, :columns]
    approximation = (plane[0::2, 0::2] + plane[0::2, 1::2] + plane[1::2, 0::2] + plane[1::2, 1::2]) / 2
    marked = approximation.copy()
    number = 0
    for block_row in range(approximation.shape[0] // 4):
        for block_column in range(approximation.shape[1] // 4):
            block = marked[block_row * 4 : block_row * 4 + 4, block_column * 4 : block_column * 4 + 4]
            flat = block.reshape(-1)
            position = int(np.argmax(np.abs(flat[1:]))) + 1
            value, bit = flat[position], bits[number % len(bits)]
            moved = (abs(value) // 36 + 0.25 + 0.5 * bit) * 36
            flat[position] = moved if value >= 0 else -moved
            block[:] = flat.reshape(4, 4)
            number += 1
    # The inverse Haar transform, details unchanged, adds half the change to each pixel of a cell.
    change = np.repeat(np.repeat((marked - approximation) / 2, 2, axis=0), 2, axis=1)
    u_marked = u.copy()
    u_marked[:rows, :columns] = np.floor(u[:rows, :columns] + change)  # numpy's cast into uint8 truncates
    out = np.empty_like(pixels)
    out[..., 0] = luma + 1.140 * (v - 128)
    out[..., 1] = luma - 0.395 * (u_marked - 128) - 0.581 * (v - 128)
    out[..., 2] = luma + 2.032 * (u_marked - 128)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# --- C2PA: a test certificate authority and signed files ---


@dataclass
class TestAuthority:
    root_pem: str
    chain_pem: str  # the signer's certificate, then the intermediate's
    key_pem: str


def make_authority(name: str = "coe test") -> TestAuthority:
    """A root CA, an intermediate CA and an end-entity signer with what the C2PA certificate
    profile asks: digitalSignature key usage, an allowed extended key usage, not a CA, key ids."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def subject(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"{name} org"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def certificate(common_name, key, issuer_name, issuer_key, is_ca: bool, path_length=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject(common_name))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )
        if is_ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ), critical=True)
        else:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ), critical=True).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, intermediate_key, signer_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = certificate(f"{name} root CA", root_key, subject(f"{name} root CA"), root_key, True, 1)
    intermediate = certificate(f"{name} intermediate CA", intermediate_key, root.subject, root_key, True, 0)
    signer = certificate(f"{name} signer", signer_key, intermediate.subject, intermediate_key, False)

    def pem(cert) -> str:
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    key = signer_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()
    return TestAuthority(pem(root), pem(signer) + pem(intermediate), key)


def sign_c2pa(asset: bytes, mime_type: str, authority: TestAuthority, source_type: str | None,
              action: str = "c2pa.created", generator: str = "coe-tests/1.0", agent: str | None = None,
              remote_url: str | None = None) -> bytes:
    """`asset` with a C2PA manifest: one action, with `source_type` as its IPTC digital source
    type, signed (ES256, no time stamp) by the authority's signer; embedded, or with `remote_url`
    only referenced from the file's XMP (the manifest itself is not kept anywhere)."""
    import c2pa

    entry: dict = {"action": action}
    if source_type:
        entry["digitalSourceType"] = f"{SOURCE_TYPE}{source_type}"
    if agent:
        entry["softwareAgent"] = {"name": agent}
    manifest = {
        "claim_generator_info": [{"name": generator.split("/")[0], "version": generator.split("/")[-1]}],
        "title": "coe test asset",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [entry]}}],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, authority.chain_pem.encode(),
                                                        authority.key_pem.encode(), None))
    context = c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False, "verify_after_sign": False}})
    builder = c2pa.Builder(json.dumps(manifest), context)
    if remote_url:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    output = io.BytesIO()
    builder.sign(signer, mime_type, io.BytesIO(asset), output)
    return output.getvalue()


def write_trust_list(folder: Path, *authorities: TestAuthority) -> Path:
    path = folder / "test-anchors.pem"
    path.write_text("".join(authority.root_pem for authority in authorities))
    return path


def flip_pixel_byte(jpeg: bytes) -> bytes:
    """The JPEG with one byte of its entropy-coded data changed: its manifest's data hash fails."""
    scan = jpeg.rfind(b"\xff\xda")
    position = scan + 40
    changed = bytearray(jpeg)
    changed[position] = changed[position] ^ 0x01 if changed[position] not in (0xFE, 0xFF) else 0x11
    return bytes(changed)


# --- NovelAI: its PNG text chunks, signed as NovelAI signs them, by a key the test makes ---


def novelai_png(rgba: np.ndarray, private_key, model: str = "NovelAI Diffusion V4.5 4BDE2A90") -> bytes:
    """NovelAI's chunks, with `signed_hash`: ed25519 over the RGB bytes and the Comment's JSON."""
    import base64

    comment = {"prompt": "1girl, cherry blossoms", "steps": 28, "scale": 5.0, "seed": 42, "sampler": "k_euler_ancestral",
               "request_type": "PromptGenerateRequest"}
    message = np.ascontiguousarray(rgba[:, :, :3]).tobytes() + json.dumps(comment).encode("utf-8")
    comment["signed_hash"] = base64.b64encode(private_key.sign(message)).decode()
    text = {"Title": "NovelAI generated image", "Description": comment["prompt"], "Software": "NovelAI",
            "Source": model, "Generation time": "2.1", "Comment": json.dumps(comment)}
    return png_bytes(rgba, text)


def public_key_base64(private_key) -> str:
    import base64

    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()

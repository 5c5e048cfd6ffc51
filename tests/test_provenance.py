"""The provenance expert's readers, on files the tests make (tests/support/provenance_files.py): each
generator's metadata, IPTC XMP, EXIF, NovelAI's signature, the SD watermark, C2PA manifests signed
by a test CA that only a test trust list trusts, and files built to break a reader: appended
bytes, huge and compressed-bomb chunks, garbage."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from coe.config import CONFIG_DIR
from coe.core.errors import UserError
from coe.core.records import Provenance, ProvenanceFinding
from coe.core.yaml_files import load_yaml_model
from experts.base import ExpertCard, FileExpert, create_expert
from experts.provenance import summarise
from experts.provenance.watermark import PAYLOADS
from tests.support import provenance_files as files

CARD = load_yaml_model(CONFIG_DIR / "experts" / "provenance.yaml", ExpertCard)


def expert(**params) -> FileExpert:
    return create_expert(CARD.model_copy(update={"params": params}))


@pytest.fixture(scope="module")
def shipped() -> FileExpert:
    return expert()


def by_source(record: Provenance, source: str) -> ProvenanceFinding:
    matches = [finding for finding in record.findings if finding.source == source]
    assert matches, f"no {source} finding in {[finding.source for finding in record.findings]}"
    return matches[0]


# --- the expert and its record ---


def test_the_card_builds_a_file_expert_without_importing_c2pa():
    code = ("import sys; from coe.core.yaml_files import load_yaml_model; "
            "from experts.base import ExpertCard, create_expert, FileExpert; "
            f"card = load_yaml_model({str(CONFIG_DIR / 'experts' / 'provenance.yaml')!r}, ExpertCard); "
            "assert isinstance(create_expert(card), FileExpert); assert 'c2pa' not in sys.modules, 'c2pa imported'")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_nothing_found_is_no_evidence_never_real(shipped):
    for data in (files.png_bytes(files.photo(64)), files.webp_bytes(files.photo(64))):
        record = shipped.inspect(data)
        assert (record.grade, record.says, record.findings, record.error) == ("none", "unknown", [], None)


def test_the_strongest_grade_speaks_and_disagreement_at_it_says_unknown():
    claim = ProvenanceFinding(source="a1111", grade="claim", says="generated", generator="A", detail="d")
    hint = ProvenanceFinding(source="camera_exif", grade="hint", says="captured", detail="d")
    assert summarise([hint, claim]).model_dump(include={"grade", "says", "source", "generator"}) == {
        "grade": "claim", "says": "generated", "source": "a1111", "generator": "A"}
    opposite = ProvenanceFinding(source="iptc", grade="claim", says="captured", detail="d")
    assert (summarise([claim, opposite]).grade, summarise([claim, opposite]).says) == ("claim", "unknown")
    invalid = ProvenanceFinding(source="c2pa", grade="none", says="unknown", validation="invalid", detail="d")
    assert summarise([invalid]).grade == "none" and summarise([invalid]).findings == [invalid]


# --- generator metadata ---


@pytest.mark.parametrize("chunk", ["tEXt", "zTXt", "iTXt"])
def test_a1111_parameters_in_any_png_text_chunk_name_the_web_ui_and_model(shipped, chunk):
    data = files.png_bytes(files.photo(64), {"parameters": files.A1111_PARAMETERS},
                           compressed=("parameters",) if chunk in ("zTXt", "iTXt") else (),
                           international=("parameters",) if chunk == "iTXt" else ())
    record = shipped.inspect(data)
    finding = by_source(record, "a1111")
    assert (record.grade, record.says, record.source) == ("claim", "generated", "a1111")
    assert (finding.generator, finding.model) == ("AUTOMATIC1111 Stable Diffusion web UI", "v1-5-pruned-emaonly")
    assert "Steps: 28" in finding.fields["settings"]


def test_forge_is_told_from_automatic1111_by_its_version(shipped):
    record = shipped.inspect(files.png_bytes(files.photo(64), {"parameters": files.FORGE_PARAMETERS}))
    assert record.generator == "Stable Diffusion WebUI Forge"


def test_a_parameters_chunk_that_is_not_a1111s_says_nothing(shipped):
    record = shipped.inspect(files.png_bytes(files.photo(64), {"parameters": "exposure 1/250, f/8"}))
    assert record.grade == "none"


@pytest.mark.parametrize("byte_order", ["utf-16-be", "utf-16-le"])
def test_a1111_parameters_in_jpeg_and_webp_user_comment(shipped, byte_order):
    comment = b"UNICODE\x00" + files.A1111_PARAMETERS.encode(byte_order)
    exif = files.exif_bytes(exif_ifd={0x9286: comment})
    for data in (files.jpeg_bytes(files.photo(64), exif=exif), files.webp_bytes(files.photo(64), exif=exif)):
        finding = by_source(shipped.inspect(data), "a1111")
        assert finding.model == "v1-5-pruned-emaonly" and "EXIF UserComment" in finding.detail


def test_comfyui_graph_names_the_checkpoint(shipped):
    data = files.png_bytes(files.photo(64), {"prompt": json.dumps(files.COMFYUI_PROMPT),
                                             "workflow": json.dumps(files.COMFYUI_WORKFLOW)})
    finding = by_source(shipped.inspect(data), "comfyui")
    assert (finding.generator, finding.model, finding.grade) == ("ComfyUI", "sd_xl_base_1.0.safetensors", "claim")
    assert "KSampler" in finding.fields["nodes"]
    workflow_only = shipped.inspect(files.png_bytes(files.photo(64), {"workflow": json.dumps(files.COMFYUI_WORKFLOW)}))
    assert workflow_only.generator == "ComfyUI"
    webp = files.webp_bytes(files.photo(64), exif=files.exif_bytes({0x0110: "prompt:" + json.dumps(files.COMFYUI_PROMPT)}))
    assert by_source(shipped.inspect(webp), "comfyui").model == "sd_xl_base_1.0.safetensors"


def test_a_prompt_chunk_that_is_not_a_comfyui_graph_says_nothing(shipped):
    assert shipped.inspect(files.png_bytes(files.photo(64), {"prompt": "a cat on a mat"})).grade == "none"


@pytest.mark.parametrize(("key", "value", "model"), [
    ("invokeai_metadata", json.dumps(files.INVOKEAI_METADATA), "juggernautXL_v9"),
    ("sd-metadata", json.dumps({"model": "stable diffusion", "model_weights": "stable-diffusion-1.5",
                                "app_id": "invoke-ai/InvokeAI", "app_version": "2.3.5"}), "stable-diffusion-1.5"),
    ("Dream", '"a cat" -s 50 -S 1234 -W 512 -H 512 -C 7.5 -A k_lms', None),
])
def test_invokeai_metadata_of_each_generation(shipped, key, value, model):
    finding = by_source(shipped.inspect(files.png_bytes(files.photo(64), {key: value})), "invokeai")
    assert finding.generator.startswith("InvokeAI") and finding.model == model


def test_fooocus_in_its_own_scheme_and_in_a1111s(shipped):
    own = files.png_bytes(files.photo(64), {"parameters": json.dumps(files.FOOOCUS_PARAMETERS), "fooocus_scheme": "fooocus"})
    record = shipped.inspect(own)
    assert (record.source, record.generator) == ("fooocus", "Fooocus")
    assert by_source(record, "fooocus").model == "juggernautXL_v8Rundiffusion.safetensors"
    a1111_scheme = files.A1111_PARAMETERS.replace("Version: v1.9.4", "Version: Fooocus v2.5.5")
    record = shipped.inspect(files.png_bytes(files.photo(64), {"parameters": a1111_scheme}))
    assert [finding.source for finding in record.findings] == ["fooocus"]
    jpeg = files.jpeg_bytes(files.photo(64), exif=files.exif_bytes({0x0131: "Fooocus v2.5.5"}))
    assert shipped.inspect(jpeg).generator == "Fooocus"


def test_midjourney_description_with_a_job_id(shipped):
    record = shipped.inspect(files.png_bytes(files.photo(64), {"Description": files.MIDJOURNEY_DESCRIPTION}))
    finding = by_source(record, "midjourney")
    assert (finding.model, finding.fields["job_id"]) == ("v 6.1", "5c4a4f2e-8d4b-4e0e-9c63-2a3b8a1f7e21")
    in_xmp = files.jpeg_bytes(files.photo(64), xmp=files.xmp_packet(description=files.MIDJOURNEY_DESCRIPTION))
    assert by_source(shipped.inspect(in_xmp), "midjourney").detail.startswith("JPEG XMP dc:description")
    no_job = shipped.inspect(files.png_bytes(files.photo(64), {"Description": "a red fox --v 6"}))
    assert no_job.grade == "none"


def test_flux_reference_code_exif_is_a_claim_not_a_camera(shipped):
    exif = files.exif_bytes({0x010F: "Black Forest Labs", 0x0110: "flux-dev", 0x0131: "AI generated;txt2img;flux",
                             0x010E: "a photo of a forest"})
    record = shipped.inspect(files.jpeg_bytes(files.photo(64), exif=exif))
    assert (record.grade, record.source, by_source(record, "flux").model) == ("claim", "flux", "flux-dev")
    assert "camera_exif" not in {finding.source for finding in record.findings}


def test_openai_exif_as_dalle_writes_it(shipped):
    # DALL-E's previews keep both tags in IFD0, where cameras never put them.
    exif = files.exif_bytes({0x927C: "OpenAI--ImageGeneration--173633", 0x9286: "Made with OpenAI Labs"})
    record = shipped.inspect(files.png_bytes(files.photo(64), exif=exif))
    assert (record.grade, record.says, record.source, record.generator) == ("claim", "generated", "openai_exif", "OpenAI")


def test_novelai_signature_is_proof_only_with_the_key_and_the_signed_pixels():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    rgba = np.dstack([files.photo(64), np.full((64, 64), 255, np.uint8)])
    data = files.novelai_png(rgba, key)
    verifier = expert(novelai={"public_key": files.public_key_base64(key)})
    record = verifier.inspect(data)
    assert (record.grade, record.says, record.source, record.signer) == ("proof", "generated", "novelai", "NovelAI")
    assert by_source(record, "novelai").model is not None
    # NovelAI's published key did not sign this file: the metadata remains an unsigned claim.
    assert expert().inspect(data).grade == "claim"
    changed = rgba.copy()
    changed[0, 0, 0] ^= 1
    tampered = files.png_bytes(changed, {key_: value for key_, value in
                                         Image.open(__import__("io").BytesIO(data)).text.items()})
    record = verifier.inspect(tampered)
    assert record.grade == "claim" and any(f.grade == "none" and f.source == "novelai" for f in record.findings)


# --- XMP and EXIF ---


@pytest.mark.parametrize(("source_type", "grade", "says"), [
    ("trainedAlgorithmicMedia", "claim", "generated"),
    ("compositeWithTrainedAlgorithmicMedia", "claim", "ai_edited"),
    ("digitalCapture", "hint", "captured"),
])
def test_iptc_digital_source_type_in_xmp(shipped, source_type, grade, says):
    data = files.jpeg_bytes(files.photo(64), xmp=files.xmp_packet(source_type))
    record = shipped.inspect(data)
    finding = by_source(record, "iptc")
    assert (finding.grade, finding.says) == (grade, says)
    assert finding.fields["digital_source_type"].endswith(source_type)


def test_iptc_ai_system_fields_name_the_generator(shipped):
    data = files.jpeg_bytes(files.photo(64), xmp=files.xmp_packet("trainedAlgorithmicMedia", ai_system="Imagen 3"))
    assert shipped.inspect(data).generator == "Imagen 3"


def test_xmp_with_a_dtd_is_not_expanded(shipped):
    bomb = ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>')
    record = shipped.inspect(files.jpeg_bytes(files.photo(64), xmp=bomb))
    assert "iptc" not in {finding.source for finding in record.findings} and "DTD" in record.error


def test_camera_exif_is_a_hint_and_libjpeg_tables_say_software(shipped):
    exif = files.exif_bytes({0x010F: "Canon", 0x0110: "Canon EOS 5D Mark IV"},
                            {0x9003: "2024:05:01 10:00:00", 0xA434: "EF24-70mm f/2.8L II USM"})
    # A camera's own tables are not libjpeg's scaled standard ones.
    camera_tables = [[2 + (index % 7) for index in range(64)], [3 + (index % 5) for index in range(64)]]
    record = shipped.inspect(files.jpeg_bytes(files.photo(64), exif=exif, qtables=camera_tables))
    assert (record.grade, record.says, record.source) == ("hint", "captured", "camera_exif")
    assert by_source(record, "camera_exif").fields["lensmodel"] == "EF24-70mm f/2.8L II USM"
    assert "jpeg_tables" not in {finding.source for finding in record.findings}
    software = shipped.inspect(files.jpeg_bytes(files.photo(64), quality=83))
    finding = by_source(software, "jpeg_tables")
    assert (finding.grade, finding.says, finding.fields["libjpeg_quality"]) == ("hint", "edited", "83")


def test_any_bytes_in_text_survive_as_valid_unicode(shipped):
    latin = "Steps: 20, Sampler: Euler, Model: caf\xe9 \xff\xfe"
    record = shipped.inspect(files.png_bytes(files.photo(64), {"parameters": "x\n" + latin}))
    assert by_source(record, "a1111").model == "caf\xe9 \xff\xfe"
    broken = files.png_bytes(files.photo(64), {"parameters": "é"}, international=("parameters",))
    broken = broken.replace("é".encode(), b"\xff\xfe")  # not UTF-8: the chunk's CRC no longer matters here
    Provenance.model_validate_json(shipped.inspect(broken).model_dump_json())


# --- C2PA, signed by a test CA, trusted only through a test trust list ---


@pytest.fixture(scope="module")
def authority() -> files.TestAuthority:
    return files.make_authority()


@pytest.fixture(scope="module")
def trusting(authority, tmp_path_factory) -> FileExpert:
    anchors = files.write_trust_list(tmp_path_factory.mktemp("trust"), authority)
    return expert(c2pa={"trust_anchors": [str(anchors)], "allowed_list": [], "tsa_anchors": []})


@pytest.fixture(scope="module")
def generated_jpeg(authority) -> bytes:
    return files.sign_c2pa(files.jpeg_bytes(files.photo(128)), "image/jpeg", authority, "trainedAlgorithmicMedia",
                           agent="Test Diffusion 2")


def test_a_trusted_manifest_is_proof_naming_the_signer_and_what_was_done(trusting, generated_jpeg):
    record = trusting.inspect(generated_jpeg)
    finding = by_source(record, "c2pa")
    assert (record.grade, record.says, record.source, record.signer) == ("proof", "generated", "c2pa", "coe test org")
    assert (finding.validation, finding.generator, finding.fields["claim_generator"]) == (
        "trusted", "Test Diffusion 2", "coe-tests 1.0")
    assert finding.fields["actions"] == "c2pa.created [trainedAlgorithmicMedia] by Test Diffusion 2"


def test_a_trusted_capture_is_proof_of_a_capture(trusting, authority):
    for data, mime in ((files.jpeg_bytes(files.photo(128)), "image/jpeg"), (files.png_bytes(files.photo(128)), "image/png")):
        record = trusting.inspect(files.sign_c2pa(data, mime, authority, "digitalCapture"))
        assert (record.grade, record.says) == ("proof", "captured")


def test_a_valid_manifest_from_a_signer_on_no_list_is_a_claim(shipped, generated_jpeg):
    finding = by_source(shipped.inspect(generated_jpeg), "c2pa")
    assert (finding.grade, finding.validation, finding.says) == ("claim", "valid", "generated")
    assert "signingCredential.untrusted" in finding.fields["failures"]


def test_a_tampered_manifest_is_invalid_and_no_evidence(trusting, generated_jpeg):
    record = trusting.inspect(files.flip_pixel_byte(generated_jpeg))
    finding = by_source(record, "c2pa")
    assert (finding.grade, finding.validation) == ("none", "invalid")
    assert "assertion.dataHash.mismatch" in finding.fields["failures"]
    assert record.says != "generated" and record.grade in ("none", "hint")


def test_a_remote_only_manifest_offline_is_reported_and_the_rest_still_read(trusting, authority):
    exif = files.exif_bytes(exif_ifd={0x9286: files.user_comment(files.A1111_PARAMETERS)})
    data = files.sign_c2pa(files.jpeg_bytes(files.photo(128), exif=exif), "image/jpeg", authority,
                           "trainedAlgorithmicMedia", remote_url="https://manifests.example.invalid/abc.c2pa")
    record = trusting.inspect(data)
    remote = by_source(record, "c2pa")
    assert (remote.grade, remote.fields["remote_manifest"]) == ("none", "https://manifests.example.invalid/abc.c2pa")
    assert (record.grade, record.source, record.error) == ("claim", "a1111", None)


def test_the_identity_follows_the_trust_lists_and_parameters(trusting, shipped):
    assert trusting.identity != shipped.identity == expert().identity
    assert expert(watermark={"enabled": True}).identity != shipped.identity


def test_the_expert_pickles_for_worker_processes(trusting, generated_jpeg):
    import pickle

    assert pickle.loads(pickle.dumps(trusting)).inspect(generated_jpeg).grade == "proof"


def test_a_user_trust_list_replaces_the_shipped_ones_and_a_missing_one_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a file"):
        expert(c2pa={"trust_anchors": [str(tmp_path / "missing.pem")]})
    assert expert(c2pa={"enabled": False}).inspect(b"\xff\xd8\xff\xd9").grade == "none"


# --- bytes after the end, huge chunks, garbage ---


def test_appended_bytes_change_nothing(shipped, trusting, generated_jpeg):
    plain = files.jpeg_bytes(files.photo(64))
    # A tEXt chunk's worth of A1111 text, an EXIF segment and 13 stray bytes, all after the end.
    tails = [b"Steps: 20, Sampler: Euler a, Model: sdxl", b"\xff\xe1\x00\x20Exif\x00\x00" + b"\x00" * 26,
             b"\x00" * 6 + b"FAKE!!\x00" + b"\xff"]
    for tail in tails:
        assert shipped.inspect(plain + tail).model_dump(exclude={"latency_ms"}) == \
            shipped.inspect(plain).model_dump(exclude={"latency_ms"})
    png = files.png_bytes(files.photo(64))
    after_iend = png + files.png_bytes(files.photo(8), {"parameters": files.A1111_PARAMETERS})[8:]
    assert shipped.inspect(after_iend).grade == "none"
    assert trusting.inspect(generated_jpeg + b"0123456789abc").grade == "proof"


def test_a_compressed_text_bomb_is_cut_in_bounded_time_and_memory(shipped):
    bomb = zlib.compress(b"Steps: 20, " + b"a" * (200 << 20), 9)  # 200 MB of text in ~200 KB
    chunk = b"parameters\x00\x00" + bomb
    png = files.png_bytes(files.photo(64))
    data = png[:-12] + len(chunk).to_bytes(4, "big") + b"zTXt" + chunk + zlib.crc32(b"zTXt" + chunk).to_bytes(4, "big") + png[-12:]
    tracemalloc.start()
    started = time.perf_counter()
    record = shipped.inspect(data)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 5 and peak < 64 << 20, (seconds, peak)
    assert "decompresses past" in record.error


def test_a_huge_chunk_and_a_lying_length_are_bounded(shipped):
    png = files.png_bytes(files.photo(64))
    text = b"Comment\x00" + b"x" * (40 << 20)
    huge = png[:-12] + len(text).to_bytes(4, "big") + b"tEXt" + text + b"\x00\x00\x00\x00" + png[-12:]
    started = time.perf_counter()
    record = shipped.inspect(huge)
    assert time.perf_counter() - started < 5 and "read" in record.error
    lying = png[:33] + (0x7FFFFFFF).to_bytes(4, "big") + b"tEXt" + b"parameters\x00Steps: 1,"
    assert shipped.inspect(lying).grade == "none"


def test_garbage_never_raises(shipped, generated_jpeg):
    rng = np.random.default_rng(0)
    samples = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xe1\xff\xff", b"RIFF\xff\xff\xff\xffWEBP",
               b"II*\x00" + bytes(20), bytes(rng.integers(0, 256, 4096, dtype=np.uint8))]
    for _ in range(40):
        mutated = bytearray(generated_jpeg)
        for position in rng.integers(0, len(mutated), 8):
            mutated[position] = int(rng.integers(0, 256))
        samples.append(bytes(mutated[: int(rng.integers(2, len(mutated)))]))
    for data in samples:
        Provenance.model_validate_json(shipped.inspect(data).model_dump_json())


# --- Stable Diffusion's invisible watermark ---


def test_watermarks_are_off_unless_asked(shipped):
    marked = files.embed_watermark(files.photo(256), PAYLOADS["SDV2"])
    assert "watermark" not in {finding.source for finding in shipped.inspect(files.png_bytes(marked)).findings}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_an_embedded_watermark_decodes_in_png_and_is_lost_in_jpeg(payload):
    decoding = expert(watermark={"enabled": True})
    marked = files.embed_watermark(files.photo(512), PAYLOADS[payload])
    finding = by_source(decoding.inspect(files.png_bytes(marked)), "watermark")
    assert (finding.grade, finding.says, finding.fields["payload"]) == ("hint", "generated", payload)
    assert float(finding.fields["bit_error"]) <= 0.1
    lossy = decoding.inspect(files.jpeg_bytes(marked, quality=90))
    assert "watermark" not in {finding.source for finding in lossy.findings}
    clean = decoding.inspect(files.png_bytes(files.photo(512)))
    assert "watermark" not in {finding.source for finding in clean.findings}


def test_the_speed_benchmark_times_files_with_and_without_a_manifest():
    from pathlib import Path

    result = subprocess.run([sys.executable, "-m", "benchmarks.scripts.provenance_speed", "--repeat", "1"], check=False,
                            capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert "without manifest median" in result.stdout and "with manifest    median" in result.stdout
    assert "C2PA JPEG 1024x768" in result.stdout and "(claim, c2pa)" in result.stdout

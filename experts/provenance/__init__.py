"""Provenance: what a file itself says about where it came from, graded as evidence, read from
its bytes before any pixel expert sees it.

Readers, each in its module: C2PA manifests (provenance.c2pa_manifests), IPTC DigitalSourceType in XMP
(provenance.xmp), generator metadata (provenance.generators) and NovelAI's signature
(provenance.novelai), Stable Diffusion's invisible watermarks (provenance.watermark, optional),
camera EXIF and JPEG tables as hints (provenance.camera). Text is read from the container's
structure only (provenance.containers): bytes after a file's end add nothing.

Each finding is graded proof / claim / hint / none; the record takes the strongest. Nothing found
is no evidence, never "real": stripped metadata is the normal case on the web."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from coe.core.records import POINTS_TOWARDS, EvidenceGrade, Provenance, ProvenanceFinding
from experts.base import ExpertCard, FileExpert, register_expert
from experts.provenance.c2pa_manifests import C2PAParams, C2PAReader, remote_manifest_finding, stripped_manifest_finding
from experts.provenance.camera import camera_findings
from experts.provenance.containers import Container, ContainerLimits, read_container
from experts.provenance.exif import ExifFields, read_exif
from experts.provenance.generators import XMP_DESCRIPTION, generator_findings
from experts.provenance.novelai import NOVELAI_PUBLIC_KEY, signature_finding, signed_comment
from experts.provenance.watermark import LOSSLESS_FORMATS, WatermarkParams, watermark_finding
from experts.provenance.xmp import XmpFields, iptc_finding, read_xmp

GRADE_STRENGTH: dict[EvidenceGrade, int] = {"proof": 3, "claim": 2, "hint": 1, "none": 0}
_STATE_RANK = {"trusted": 3, "valid": 2, "invalid": 1, None: 0}
# Formats whose structure provenance.containers reads: a C2PA manifest in them has a marker there.
_STRUCTURED = ("png", "jpeg", "webp")


class NovelAIParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    public_key: str = Field(default=NOVELAI_PUBLIC_KEY, description="base64 ed25519 key NovelAI signs with")
    max_pixels: int = Field(default=16_777_216, ge=1, description="larger images are not decoded to check it")


class ProvenanceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limits: ContainerLimits = ContainerLimits()
    c2pa: C2PAParams = C2PAParams()
    novelai: NovelAIParams = NovelAIParams()
    watermark: WatermarkParams = WatermarkParams()


@register_expert("provenance")
class ProvenanceExpert(FileExpert):
    Params = ProvenanceParams

    def __init__(self, card: ExpertCard):
        super().__init__(card)
        # Reads the trust lists now, so that a missing one is a configuration error, not a file's.
        self.c2pa = C2PAReader(self.params.c2pa) if self.params.c2pa.enabled else None

    @property
    def identity(self) -> str:
        """The card's version and a digest of what changes a reading: the parameters, the trust
        lists' contents (a refreshed list re-reads files) and the C2PA binding's version."""
        from importlib.metadata import version

        settings = self.c2pa.settings if self.c2pa else None
        described = json.dumps([self.params.model_dump(mode="json"), settings, version("c2pa-python")], sort_keys=True)
        return f"{self.card.version}:{hashlib.sha256(described.encode()).hexdigest()[:12]}"

    def inspect(self, data: bytes) -> Provenance:
        started = time.perf_counter()
        findings: list[ProvenanceFinding] = []
        problems: list[str] = []

        def attempt(reader: str, read: Callable[[], list[ProvenanceFinding]]) -> None:
            # One reader's failure costs only its own findings: the others still speak.
            try:
                findings.extend(read())
            except Exception as error:
                problems.append(f"{reader}: {type(error).__name__}: {error}")

        def parsed(part: str, parse: Callable, nothing):
            try:
                return parse()
            except Exception as error:
                problems.append(f"{part}: {type(error).__name__}: {error}")
                return nothing

        container = parsed("container", lambda: read_container(data, self.params.limits),
                           Container(format="other", end=len(data)))
        exif = parsed("EXIF", lambda: read_exif(container.exif), ExifFields())
        xmp = parsed("XMP", lambda: read_xmp(container.xmp), XmpFields())
        problems += [note for note in (*container.notes, exif.error, xmp.error) if note]
        body = data if container.end >= len(data) else data[: container.end]
        where = container.format.upper()

        attempt("generators", lambda: generator_findings(_texts(container, xmp), exif, where))
        attempt("novelai signature", lambda: self._novelai(body, container, exif))
        attempt("iptc", lambda: [finding] if (finding := iptc_finding(xmp, where)) else [])
        attempt("camera", lambda: camera_findings(exif, container.quantization_tables, where))
        if self.c2pa is not None:
            attempt("c2pa", lambda: self._c2pa(data, body, container, xmp))
        if self.params.watermark.enabled and container.format in LOSSLESS_FORMATS:
            attempt("watermark", lambda: self._watermark(body))

        record = summarise(findings)
        record.error = "; ".join(problems) or None
        record.latency_ms = 1000.0 * (time.perf_counter() - started)
        return record

    def _novelai(self, body: bytes, container: Container, exif: ExifFields) -> list[ProvenanceFinding]:
        comment = signed_comment(container.texts.get("Comment") or exif.get("UserComment"))
        if comment is None:
            return []
        model = container.texts.get("Source") or exif.get("Software") or None
        settings = self.params.novelai
        return [signature_finding(body, comment, settings.public_key, settings.max_pixels, model)]

    def _c2pa(self, data: bytes, body: bytes, container: Container, xmp: XmpFields) -> list[ProvenanceFinding]:
        reference = xmp.remote_manifest or ""
        remote = reference.startswith(("http://", "https://"))
        stripped = [stripped_manifest_finding(reference)] if reference.startswith("self#jumbf") else []
        if container.format in _STRUCTURED and not container.has_c2pa and not remote:
            return stripped  # no manifest box, no remote address: nothing for c2pa-rs to find
        read = self.c2pa.read(body, container.format)
        if body is not data and _STATE_RANK[read.state] < _STATE_RANK["valid"]:
            # A manifest signed over bytes past the container's end validates only with them;
            # appended bytes can never make a manifest validate, so the better reading stands.
            whole = self.c2pa.read(data, container.format)
            read = whole if _STATE_RANK[whole.state] > _STATE_RANK[read.state] else read
        if read.finding is not None:
            return [read.finding]
        return [remote_manifest_finding(reference)] if remote else stripped

    def _watermark(self, body: bytes) -> list[ProvenanceFinding]:
        import numpy as np
        from PIL import Image

        with Image.open(io.BytesIO(body)) as image:
            if image.width * image.height > self.params.watermark.max_pixels or min(image.size) < 256:
                return []  # the encoder refuses images under 256x256; bigger ones were resized or stitched
            rgb = np.asarray(image.convert("RGB"))
        finding = watermark_finding(rgb, self.params.watermark)
        return [finding] if finding else []


def _texts(container: Container, xmp: XmpFields) -> dict[str, str]:
    return {**container.texts, XMP_DESCRIPTION: xmp.description} if xmp.description else container.texts


def summarise(findings: list[ProvenanceFinding]) -> Provenance:
    """The record of a file's findings: grade, says, source, generator and signer of the strongest
    finding that points a way (proof > claim > hint), else of the strongest; when the pointing
    findings of that grade point opposite ways, says is unknown. A proof of an edit without AI
    therefore never hides a claim that the file was generated."""
    graded = [finding for finding in findings if finding.grade != "none"]
    if not graded:
        return Provenance(findings=findings)
    candidates = [finding for finding in graded if finding.says in POINTS_TOWARDS] or graded
    top = max(GRADE_STRENGTH[finding.grade] for finding in candidates)
    strongest = [finding for finding in candidates if GRADE_STRENGTH[finding.grade] == top]
    directions = {POINTS_TOWARDS.get(finding.says) for finding in strongest} - {None}
    lead = strongest[0]
    return Provenance(
        grade=lead.grade,
        says="unknown" if len(directions) > 1 else lead.says,
        source=lead.source,
        generator=lead.generator or next((finding.generator for finding in strongest if finding.generator), None),
        signer=lead.signer or next((finding.signer for finding in strongest if finding.signer), None),
        findings=findings,
    )

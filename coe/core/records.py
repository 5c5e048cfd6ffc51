"""Output records shared by every layer: what an image, an expert's answer, a routing
decision and a final verdict look like. Everything here is a pydantic v2 model so that
results serialise to JSON and validate on the way back in (resume, HTTP, reports)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_serializer, model_validator

from coe.core.names import exact_bytes, from_name_bytes, readable

BYTES_SUFFIX = "_bytes"


def _declare_exact_bytes(schema: dict[str, Any], model: type[Record]) -> None:
    for key in model.file_paths:
        schema["properties"][key + BYTES_SUFFIX] = {
            "type": "string", "contentEncoding": "base64",
            "description": f"the exact bytes of `{key}`, present when they are not valid UTF-8",
        }


class Record(BaseModel):
    """Text fields are written as valid Unicode whatever file names they mention (coe.core.names);
    a field named in `file_paths` that is not valid UTF-8 is followed by `<field>_bytes`, its exact
    bytes, from which reading the record back restores the path."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_declare_exact_bytes)
    file_paths: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _valid_unicode(self, handler, info):
        data = handler(self)
        if not info.mode_is_json() or not isinstance(data, dict):
            return data
        if all(not isinstance(value, str) or readable(value) is value for value in data.values()):
            return data
        written = {}
        for key, value in data.items():
            written[key] = readable(value) if isinstance(value, str) else value
            if key in self.file_paths and isinstance(value, str) and (exact := exact_bytes(value)):
                written[key + BYTES_SUFFIX] = exact
        return written

    @model_validator(mode="before")
    @classmethod
    def _exact_paths(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(key + BYTES_SUFFIX in data for key in cls.file_paths):
            data = dict(data)
            for key in cls.file_paths:
                if key + BYTES_SUFFIX in data:
                    data[key] = from_name_bytes(data.pop(key + BYTES_SUFFIX))
        return data


class ErrorCode(StrEnum):
    """Stable error codes: users filter on them, so never rename one."""

    NOT_FOUND = "not_found"
    BROKEN_SYMLINK = "broken_symlink"
    NOT_REGULAR_FILE = "not_regular_file"
    UNREADABLE = "unreadable"
    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TRUNCATED = "truncated"
    CORRUPT = "corrupt"
    DECOMPRESSION_BOMB = "decompression_bomb"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    BAD_MANIFEST_ROW = "bad_manifest_row"
    FEATURES_FAILED = "features_failed"
    ROUTING_FAILED = "routing_failed"
    EXPERT_FAILED = "expert_failed"
    INTERNAL_ERROR = "internal_error"


class ErrorInfo(Record):
    code: ErrorCode
    message: str


class ImageRecord(Record):
    """One decoded image. `id` is the sha256 of the file's bytes, so identical files share it."""

    file_paths: ClassVar[tuple[str, ...]] = ("path",)
    id: str
    path: str
    width: int
    height: int
    format: str
    mode: str
    size_bytes: int


Label = Literal["real", "fake"]
VerdictLabel = Literal["real", "fake", "uncertain"]
ArtifactCategory = Literal["physics", "structure", "distortion", "other"]


class Artifact(Record):
    """One localised artifact. An expert attaches its pixel mask in memory (`with_mask`); the run
    that keeps it writes it as a PNG and records `mask_file`, relative to the run folder."""

    category: ArtifactCategory = "other"
    phrase: str
    bbox: tuple[int, int, int, int] | None = Field(default=None, description="x0, y0, x1, y1 of the mask")
    score: float | None = None
    explanation: str | None = None
    mask_file: str | None = None
    _mask: np.ndarray | None = PrivateAttr(default=None)

    def with_mask(self, mask: np.ndarray) -> Artifact:
        """Attach a boolean (H, W) mask at the image's size; the bbox follows from it."""
        self._mask = np.asarray(mask, dtype=bool)
        rows, columns = np.nonzero(self._mask)
        if rows.size:
            self.bbox = (int(columns.min()), int(rows.min()), int(columns.max()) + 1, int(rows.max()) + 1)
        return self

    @property
    def mask(self) -> np.ndarray | None:
        return self._mask


class Localization(Record):
    """What a localising expert found in one image: artifacts (with masks attached in memory until
    the run writes them), the union of their masks, and its explanation."""

    expert: str
    explanation: str | None = None
    artifacts: list[Artifact] = []
    union_mask_file: str | None = None
    latency_ms: float = 0.0
    _union_mask: np.ndarray | None = PrivateAttr(default=None)

    def with_union_mask(self, mask: np.ndarray) -> Localization:
        """Attach the union of everything the expert localised, a boolean (H, W) mask in memory."""
        self._union_mask = np.asarray(mask, dtype=bool)
        return self

    @property
    def union_mask(self) -> np.ndarray | None:
        """The attached union mask, or the union of the artifacts' masks."""
        if self._union_mask is not None:
            return self._union_mask
        masks = [artifact.mask for artifact in self.artifacts if artifact.mask is not None]
        return np.logical_or.reduce(masks) if masks else None


class ExpertOutput(Localization):
    """One expert's answer about one image: p_fake and label, and what it localised or explained."""

    p_fake: float = Field(ge=0.0, le=1.0)
    label: Label


class RankedExpert(Record):
    expert: str
    p_correct: float
    cost: float
    utility: float


class RoutingDecision(Record):
    router_id: str
    level: str = Field(description="the level of the router that decided (a registered router), or fixed")
    subject: str | None = None
    ranked: list[RankedExpert] = []
    chosen: str | None
    abstained: bool = False
    novelty: float | None = Field(
        default=None, description="distance from the router's training images; above its gate's threshold it abstains"
    )
    escalated_to: list[str] = Field(default=[], description="further experts consulted because the router abstained")
    reason: str


EvidenceGrade = Literal["proof", "claim", "hint", "none"]
ProvenanceSays = Literal["generated", "ai_edited", "captured", "edited", "unknown"]
# Which way each `says` points a real-or-generated verdict; edited (no AI named) and unknown point nowhere.
POINTS_TOWARDS: dict[str, Label] = {"generated": "fake", "ai_edited": "fake", "captured": "real"}


class ProvenanceFinding(Record):
    """One piece of evidence a file carries about its origin, graded: `proof` (a trusted signed
    manifest, a verified signature) decides a verdict; `claim` (unsigned metadata naming a generator,
    a valid but untrusted manifest) is a strong prior; `hint` a weak one."""

    source: str = Field(description="what was read: c2pa, iptc, a1111, comfyui, invokeai, fooocus, novelai, "
                        "midjourney, flux, openai_exif, watermark, camera_exif, jpeg_tables, ...")
    grade: EvidenceGrade
    says: ProvenanceSays
    generator: str | None = Field(default=None, description="the generator or tool the evidence names")
    model: str | None = Field(default=None, description="the model (checkpoint) the evidence names")
    signer: str | None = None
    validation: Literal["trusted", "valid", "invalid"] | None = Field(
        default=None, description="a C2PA manifest's validation state; invalid is reported, never read as fake"
    )
    detail: str = Field(description="one sentence a user reads")
    fields: dict[str, str] = Field(default={}, description="the raw fields that mattered (values truncated)")


class Provenance(Record):
    """What a file says about where it came from. No finding is no evidence (grade none), never "real"."""

    grade: EvidenceGrade = "none"
    says: ProvenanceSays = "unknown"
    source: str | None = Field(default=None, description="the strongest finding's source")
    generator: str | None = None
    signer: str | None = None
    findings: list[ProvenanceFinding] = []
    latency_ms: float = 0.0
    error: str | None = Field(default=None, description="a reader that failed; the file is judged on pixels")


class Verdict(Record):
    """One row of `coe route` output: one per input path, errors included."""

    file_paths: ClassVar[tuple[str, ...]] = ("path", "duplicate_of")
    path: str
    image_id: str | None = None
    label: VerdictLabel | None = None
    p_fake: float | None = None
    decided_by: str | None = None
    reason: str | None = None
    explanation: str | None = None
    mask_file: str | None = Field(
        default=None, description="the union mask shown with the verdict, relative to the run folder"
    )
    expert_outputs: list[ExpertOutput] = []
    localization: Localization | None = None
    routing: RoutingDecision | None = None
    provenance: Provenance | None = None
    image: ImageRecord | None = None
    features: str | None = None
    random_weights: bool = False
    duplicate_of: str | None = None
    timings_ms: dict[str, float] = {}
    error: ErrorInfo | None = None

"""Output records shared by every layer: what an image, an expert's answer, a routing
decision and a final verdict look like. Everything here is a pydantic v2 model so that
results serialise to JSON and validate on the way back in (resume, HTTP, reports)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    category: ArtifactCategory = "other"
    phrase: str
    bbox: tuple[int, int, int, int] | None = None
    score: float | None = None
    explanation: str | None = None
    mask_file: str | None = None


class ExpertOutput(Record):
    expert: str
    p_fake: float = Field(ge=0.0, le=1.0)
    label: Label
    explanation: str | None = None
    artifacts: list[Artifact] = []
    union_mask_file: str | None = None
    latency_ms: float = 0.0


class RankedExpert(Record):
    expert: str
    p_correct: float
    cost: float
    utility: float


class RoutingDecision(Record):
    router_id: str
    level: Literal["query", "subject", "fixed"]
    subject: str | None = None
    ranked: list[RankedExpert] = []
    chosen: str | None
    abstained: bool = False
    escalated_to: list[str] = Field(default=[], description="further experts consulted because the router abstained")
    reason: str


class Verdict(Record):
    """One row of `coe route` output: one per input path, errors included."""

    path: str
    image_id: str | None = None
    label: VerdictLabel | None = None
    p_fake: float | None = None
    decided_by: str | None = None
    reason: str | None = None
    explanation: str | None = None
    expert_outputs: list[ExpertOutput] = []
    routing: RoutingDecision | None = None
    image: ImageRecord | None = None
    features: str | None = None
    random_weights: bool = False
    duplicate_of: str | None = None
    timings_ms: dict[str, float] = {}
    error: ErrorInfo | None = None

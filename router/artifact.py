"""Router artifacts: a folder with the fitted router (joblib) and `router.json`, which records
what the router was trained for (feature extractor, experts and their versions), on what data,
and how well it did. Loading checks all of that: a router trained on other features or other
experts would route confidently and wrongly.

Artifacts are versioned: saving into a router folder adds `v1/`, `v2/`, ... beside the earlier
versions, which stay loadable by their own path; the folder itself loads its latest version.

Each version also lists the samples the router was fitted on (`training_samples.txt`), so that
no evaluation counts them as held out; `training_data_hash` is the hash of that file."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import joblib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coe.core.errors import UserError
from router.calibration import PlattCalibration

ROUTER_FILE = "router.joblib"
META_FILE = "router.json"
TRAINING_SAMPLES_FILE = "training_samples.txt"
# 3: the artifact lists its training samples; older artifacts cannot say what they were trained on.
# 4: the router carries a novelty gate; older routers answer confidently on images unlike their training ones.
FORMAT_VERSION = 4


class RouterMismatchError(UserError, ValueError):
    pass


class RouterNotFoundError(UserError, FileNotFoundError):
    pass


class TrainingSource(BaseModel):
    path: str
    sha256: str


class RouterMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    router_id: str
    level: str = Field(description="the router's level: a registered router (router.base.router_levels)")

    @field_validator("level")
    @classmethod
    def _a_registered_level(cls, level: str) -> str:
        from router.base import router_levels

        if level not in router_levels():
            raise ValueError(f"no router of level {level!r} is registered (known: {', '.join(sorted(router_levels()))})")
        return level

    version: int = 1
    model: str
    subject_column: str | None = Field(default=None, description="outcome column the subject router learned")
    trained_on: list[TrainingSource] = []
    split: dict = Field(default={}, description="how training and held-out samples were chosen (SplitSpec)")
    budget: float | None = Field(default=None, description="cost budget per image the cost weight was calibrated to")
    extractor_id: str
    feature_dim: int
    random_weights: bool
    experts: dict[str, str] = Field(description="expert name -> identity (version and training data hash)")
    expert_costs: dict[str, float]
    calibration: dict[str, PlattCalibration] = {}
    novelty_threshold: float | None = Field(
        default=None, description="novelty above which the router abstains as out of domain; null: no novelty gate"
    )
    training_data_hash: str = Field(description=f"sha256 of {TRAINING_SAMPLES_FILE}")
    n_train: int
    metrics: dict[str, float | int | str | None] = Field(
        default={}, description="the held-out evaluation's headline; null where undefined (no oracle gap to close)"
    )
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class TrainingSamples:
    """The samples a router was fitted on (and its experts' calibration), one `image_id|perturbation`
    key each, sorted."""

    keys: tuple[str, ...]

    @classmethod
    def of(cls, image_ids: Iterable[str], perturbations: Iterable[str]) -> TrainingSamples:
        return cls(tuple(sorted(f"{i}|{p}" for i, p in zip(image_ids, perturbations, strict=True))))

    @property
    def text(self) -> str:
        return "\n".join(self.keys)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def image_ids(self) -> frozenset[str]:
        """The images seen in training, whatever their perturbation: another perturbation of a
        training image is no held-out image either."""
        return frozenset(key.split("|", 1)[0] for key in self.keys)


_VERSION = re.compile(r"^v(\d+)$")


def _versions(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    found = {}
    for child in folder.iterdir():
        match = _VERSION.match(child.name)
        if match and (child / META_FILE).exists():
            found[int(match.group(1))] = child
    return found


def router_home(path: Path) -> Path:
    """The folder that holds a router's versions (`path` itself, or its parent for `.../vN`)."""
    return path.parent if _VERSION.match(path.name) and (path / META_FILE).exists() else path


def resolve_artifact(path: Path) -> Path:
    """A version folder as given, or the latest version in a router folder."""
    if (path / META_FILE).exists():
        return path
    versions = _versions(path)
    if not versions:
        raise RouterNotFoundError(f"{path} is not a router artifact (no {META_FILE} and no v1/, v2/, ... inside)")
    return versions[max(versions)]


def save_router(folder: Path, router, meta: RouterMeta, training: TrainingSamples) -> Path:
    """Save as the next version in `folder`; returns the version folder and sets `meta.version`."""
    home = router_home(folder)
    meta.version = max(_versions(home), default=0) + 1
    target = home / f"v{meta.version}"
    partial = home / f".v{meta.version}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    joblib.dump(router, partial / ROUTER_FILE)
    (partial / META_FILE).write_text(meta.model_dump_json(indent=2))
    (partial / TRAINING_SAMPLES_FILE).write_text(training.text)
    partial.replace(target)
    return target


def _unreadable(path: Path, why: str) -> RouterMismatchError:
    return RouterMismatchError(
        f"{path} is not a router artifact this coe can read (an older format, or damaged): retrain it with "
        f"`coe router train` ({why})"
    )


def read_router_meta(path: Path) -> RouterMeta:
    meta_file = resolve_artifact(path) / META_FILE
    try:
        data = json.loads(meta_file.read_text())
    except ValueError as error:
        raise _unreadable(meta_file, str(error)) from None
    found = data.get("format_version") if isinstance(data, dict) else None
    if found != FORMAT_VERSION:
        raise _unreadable(
            meta_file,
            f"format {found}; this coe reads format {FORMAT_VERSION}, which lists the training samples and carries "
            "a novelty gate",
        )
    try:
        return RouterMeta.model_validate(data)
    except ValidationError as error:
        raise _unreadable(meta_file, str(error).splitlines()[0]) from None


def read_training_samples(path: Path) -> TrainingSamples:
    """The samples the artifact at `path` was trained on, checked against its training_data_hash."""
    folder = resolve_artifact(path)
    listing = folder / TRAINING_SAMPLES_FILE
    if not listing.exists():
        raise _unreadable(folder, f"no {TRAINING_SAMPLES_FILE}")
    text = listing.read_text()
    training = TrainingSamples(tuple(text.split("\n")) if text else ())
    if training.digest != read_router_meta(folder).training_data_hash:
        raise _unreadable(listing, "its hash is not the training_data_hash of router.json")
    return training


def has_readable_artifact(path: Path) -> bool:
    """False for a missing artifact and for one an older coe wrote."""
    try:
        read_router_meta(path)
    except (FileNotFoundError, RouterMismatchError):
        return False
    return True


def load_router(path: Path, extractor_id: str, experts: dict[str, str]):
    """Load a router, refusing it when the features or the configured experts differ from its own."""
    folder = resolve_artifact(path)
    meta = read_router_meta(folder)
    if set(meta.experts) != set(experts):
        gone, new = sorted(set(meta.experts) - set(experts)), sorted(set(experts) - set(meta.experts))
        raise RouterMismatchError(
            f"router {folder} routes to experts {sorted(meta.experts)}, but the configured experts are "
            f"{sorted(experts)}"
            + (f"; not configured any more: {gone}" if gone else "")
            + (f"; unknown to the router: {new}" if new else "")
            + ". Configure the router's experts again, or retrain it for the configured ones: `coe bench run` "
            "with the new experts, then `coe router train` on the outcome tables"
        )
    if meta.extractor_id != extractor_id:
        raise RouterMismatchError(
            f"router {folder} was trained on features {meta.extractor_id!r}, but the configured extractor is "
            f"{extractor_id!r}: configure the same features.backbone/weights, or retrain the router"
        )
    changed = sorted(name for name in meta.experts if meta.experts[name] != experts[name])
    if changed:
        details = "; ".join(f"{n}: router knows {meta.experts[n]}, configured {experts[n]}" for n in changed)
        raise RouterMismatchError(
            f"router {folder} was trained on other versions of expert(s) {changed} ({details}): run `coe bench "
            "run` for them and retrain the router with `coe router train`"
        )
    return joblib.load(folder / ROUTER_FILE), meta

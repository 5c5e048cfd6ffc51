"""Router artifacts: a folder with the fitted router (joblib) and `router.json`, which records
what the router was trained for (feature extractor, experts and their versions), on what data,
and how well it did. Loading checks all of that: a router trained on other features or other
experts would route confidently and wrongly.

Artifacts are versioned: saving into a router folder adds `v1/`, `v2/`, ... beside the earlier
versions, which stay loadable by their own path; the folder itself loads its latest version."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import joblib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.calibration import PlattCalibration

ROUTER_FILE = "router.joblib"
META_FILE = "router.json"


class RouterMismatchError(ValueError):
    pass


class TrainingSource(BaseModel):
    path: str
    sha256: str


class RouterMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = 2
    router_id: str
    level: Literal["query", "subject"]
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
    training_data_hash: str
    n_train: int
    metrics: dict[str, float | int | str] = {}
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


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
        raise FileNotFoundError(f"{path} is not a router artifact (no {META_FILE} and no v1/, v2/, ... inside)")
    return versions[max(versions)]


def save_router(folder: Path, router, meta: RouterMeta) -> Path:
    """Save as the next version in `folder`; returns the version folder and sets `meta.version`."""
    home = router_home(folder)
    meta.version = max(_versions(home), default=0) + 1
    target = home / f"v{meta.version}"
    partial = home / f".v{meta.version}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    joblib.dump(router, partial / ROUTER_FILE)
    (partial / META_FILE).write_text(meta.model_dump_json(indent=2))
    partial.replace(target)
    return target


def read_router_meta(path: Path) -> RouterMeta:
    meta_file = resolve_artifact(path) / META_FILE
    try:
        return RouterMeta.model_validate(json.loads(meta_file.read_text()))
    except (ValueError, ValidationError) as error:
        raise RouterMismatchError(
            f"{meta_file} is not a router artifact this coe can read (an older format, or damaged): retrain it "
            f"with `coe router train` ({str(error).splitlines()[0]})"
        ) from None


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

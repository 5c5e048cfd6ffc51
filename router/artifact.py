"""Router artifacts: a folder with the fitted router (joblib) and `router.json`, which records
what the router was trained for (feature extractor, experts and their versions), on what data,
and how well it did. Loading checks all of that: a router trained on other features or other
experts would route confidently and wrongly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import joblib
from pydantic import BaseModel, ConfigDict, Field

from router.calibration import PlattCalibration

ROUTER_FILE = "router.joblib"
META_FILE = "router.json"


class RouterMismatchError(ValueError):
    pass


class RouterMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = 1
    router_id: str
    level: Literal["query", "subject"]
    version: int = 1
    extractor_id: str
    feature_dim: int
    random_weights: bool
    experts: dict[str, str] = Field(description="expert name -> identity (version and training data hash)")
    expert_costs: dict[str, float]
    calibration: dict[str, PlattCalibration] = {}
    training_data_hash: str
    n_train: int
    metrics: dict[str, float] = {}
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def save_router(folder: Path, router, meta: RouterMeta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(router, folder / ROUTER_FILE)
    (folder / META_FILE).write_text(meta.model_dump_json(indent=2))


def read_router_meta(folder: Path) -> RouterMeta:
    meta_file = folder / META_FILE
    if not meta_file.exists():
        raise FileNotFoundError(f"{folder} is not a router artifact (no {META_FILE})")
    return RouterMeta.model_validate(json.loads(meta_file.read_text()))


def load_router(folder: Path, extractor_id: str, experts: dict[str, str]):
    """Load a router, refusing it when the features or the configured experts differ from its own."""
    meta = read_router_meta(folder)
    if meta.extractor_id != extractor_id:
        raise RouterMismatchError(
            f"router {folder} was trained on features {meta.extractor_id!r}, but the configured extractor is "
            f"{extractor_id!r}: configure the same features.backbone/weights, or retrain the router"
        )
    if set(meta.experts) != set(experts):
        raise RouterMismatchError(
            f"router {folder} was trained for experts {sorted(meta.experts)}, but the configured experts are "
            f"{sorted(experts)}: configure the same experts, or retrain the router on the configured ones"
        )
    changed = sorted(name for name in meta.experts if meta.experts[name] != experts[name])
    if changed:
        details = "; ".join(f"{n}: router knows {meta.experts[n]}, configured {experts[n]}" for n in changed)
        raise RouterMismatchError(
            f"router {folder} was trained on other versions of expert(s) {changed} ({details}): retrain the router"
        )
    return joblib.load(folder / ROUTER_FILE), meta

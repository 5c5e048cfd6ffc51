"""Experts made of a hand-crafted forensic descriptor and a scikit-learn classifier.

Subclasses define `describe(image) -> 1-D float vector`; this base trains, calibrates, saves and
loads the classifier, and records what it was trained on (data hash, metrics, version)."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import joblib
import numpy as np
import sklearn
from pydantic import BaseModel, ConfigDict, Field
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from experts.base import ExpertNotTrainedError, TrainableExpert, TrainingDataError
from experts.weights import WeightsFormatError

MODEL_FILE = "model.joblib"
META_FILE = "meta.json"


def training_data_hash(images: Sequence[np.ndarray], labels: np.ndarray) -> str:
    """sha256 over every training image's pixels and label, in order."""
    digest = hashlib.sha256()
    for image, label in zip(images, labels, strict=True):
        digest.update(np.ascontiguousarray(image).tobytes())
        digest.update(bytes([int(label)]))
    return digest.hexdigest()


MaxSide = Annotated[int, Field(ge=16, description="larger images are centre-cropped to this, never resized")]
Regularisation = Annotated[float, Field(gt=0.0, description="inverse regularisation of the logistic regression")]


class DescriptorParams(BaseModel):
    """Parameters every descriptor expert has; families add their own or change the defaults."""

    model_config = ConfigDict(extra="forbid")
    max_side: MaxSide = 1024
    C: Regularisation = 1.0


class DescriptorExpert(TrainableExpert):
    """Descriptor + standardisation + logistic regression (C from the card's params)."""

    Params = DescriptorParams

    def __init__(self, card):
        super().__init__(card)
        self.classifier: Pipeline | None = None

    def describe(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.describe(image) for image in images]).astype(np.float64)

    def _new_classifier(self) -> Pipeline:
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.params.C, max_iter=2000))

    def fit(self, images: Sequence[np.ndarray], labels: np.ndarray) -> DescriptorExpert:
        labels = np.asarray(labels, dtype=int)
        if set(np.unique(labels)) != {0, 1}:
            raise TrainingDataError(f"expert {self.name!r} needs both real (0) and fake (1) training images")
        descriptors = self.describe_batch(images)
        train_x, val_x, train_y, val_y = train_test_split(
            descriptors, labels, test_size=0.25, random_state=0, stratify=labels
        )
        held_out = self._new_classifier().fit(train_x, train_y)
        val_p = held_out.predict_proba(val_x)[:, 1]
        self.classifier = self._new_classifier().fit(descriptors, labels)
        self.meta = trained_meta(self, images, labels, {
            "holdout_accuracy": float(accuracy_score(val_y, val_p >= 0.5)),
            "holdout_auc": float(roc_auc_score(val_y, val_p)),
            "holdout_size": len(val_y),
        })
        return self

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.classifier is None:
            raise ExpertNotTrainedError(
                f"expert {self.name!r} has no trained weights: run `coe experts train {self.name} --data DIR`"
            )
        return self.classifier.predict_proba(self.describe_batch(images))[:, 1]

    def save(self, folder: Path) -> None:
        if self.classifier is None:
            raise ExpertNotTrainedError(f"expert {self.name!r} is not trained; nothing to save")
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.classifier, folder / MODEL_FILE)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2))

    def load(self, folder: Path) -> DescriptorExpert:
        self.meta = read_trained_meta(self, folder, MODEL_FILE)
        self.classifier = joblib.load(folder / MODEL_FILE)
        return self


def trained_meta(expert: TrainableExpert, images: Sequence[np.ndarray], labels: np.ndarray, metrics: dict) -> dict:
    """What a trained expert records: who it is, the images (and labels) it learnt from, how it did."""
    return {
        "name": expert.name,
        "family": expert.family,
        "version": expert.card.version,
        "params": expert.params.model_dump(),
        "training_data_hash": training_data_hash(images, labels),
        "n_train": {"real": int((labels == 0).sum()), "fake": int((labels == 1).sum())},
        "metrics": metrics,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {"scikit-learn": sklearn.__version__, "python": platform.python_version()},
    }


def read_trained_meta(expert: TrainableExpert, folder: Path, model_file: str, hint: str = "") -> dict:
    """The META_FILE beside `model_file` in `folder`, refused when either is missing or another
    family wrote them; `hint` follows the advice to train."""
    if not (folder / model_file).exists() or not (folder / META_FILE).exists():
        raise ExpertNotTrainedError(
            f"expert {expert.name!r}: no trained weights in {folder} (expected {model_file} and {META_FILE}); "
            f"run `coe experts train {expert.name} --data DIR`{hint}"
        )
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("family") != expert.family:
        raise WeightsFormatError(f"{folder} holds a {meta.get('family')!r} model, not {expert.family!r}")
    return meta

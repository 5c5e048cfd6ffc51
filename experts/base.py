"""The Expert contract, the expert card (YAML -> pydantic), and the registry of expert families.

A family is a class registered with `@register_expert("family")`; a card names a family, its
trained weights and its cost. `create_expert(card)` is the only way the rest of coe builds one,
as open_clip's `create_model` is for models. Most experts judge pixels (`Expert`); a `FileExpert`
reads what a file's bytes say about its origin (`Provenance`) before any pixel is decoded."""

from __future__ import annotations

import importlib
import importlib.util
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from coe.core.errors import UserError
from coe.core.records import ErrorCode, ErrorInfo, ExpertOutput, Localization, Provenance
from coe.core.registry import Registry

if TYPE_CHECKING:
    from experts.sizing import Footprint

Capability = Literal["detect", "localize", "explain"]
TorchDtype = Literal["auto", "float32", "bfloat16", "float16"]


class DeviceParams(BaseModel):
    """The parameters every expert that runs a torch network has (serving moves it to the CPU of a
    cluster without GPUs through `device`); families add their own, or change the defaults."""

    model_config = ConfigDict(extra="forbid")
    device: str = Field(
        default="auto", description="auto: the first CUDA device where one exists, else the CPU; or a torch device"
    )
    batch_size: int = Field(default=16, ge=1, description="images run through the network together")


class TorchParams(DeviceParams):
    """DeviceParams and the precision the network runs in."""

    dtype: TorchDtype = Field(
        default="auto", description="auto: bfloat16 on a GPU that supports it (float16 on older ones), float32 on the CPU"
    )


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_mb: int = 512


class ExpertCard(BaseModel):
    """What a YAML card in configs/experts/ says about one configured expert."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]*$")
    family: str
    version: str = "1"
    description: str = ""
    capabilities: list[Capability] = ["detect"]
    subjects: list[str] = []
    cost: float = Field(
        default=1.0, ge=0.0,
        description="milliseconds per image: measured on the CPU for descriptor experts, derived from the model's "
        "size for model experts (experts.sizing)",
    )
    resources: Resources = Resources()
    weights: str | None = Field(
        default=None,
        description="a folder or file path (relative paths resolve in COE home) or hf-hub:ORG/REPO[@REV]; "
        "unset: experts/<name> in COE home for experts coe trains, the published checkpoint for pretrained ones",
    )
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    params: dict[str, Any] = {}


class ExpertNotTrainedError(UserError, RuntimeError):
    pass


class TrainingDataError(UserError, ValueError):
    """Training images an expert cannot learn from (a class missing, too few)."""


class CardExpert(ABC):
    """What every expert has, whatever it reads: its card, the card's params validated, a name and
    an identity."""

    family: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, card: ExpertCard):
        self.card = card
        self.params = self.Params.model_validate(card.params)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def identity(self) -> str:
        """What outcome tables and run folders record, so that changed weights are never mixed up."""
        return self.card.version


class FileExpert(CardExpert):
    """Reads what a file's bytes say about its origin (signed manifests, metadata, watermarks),
    graded as evidence. It never raises, whatever the bytes: a reader that fails is recorded in
    `Provenance.error`; and its time and memory are bounded by its parameters, not by the file."""

    @abstractmethod
    def inspect(self, data: bytes) -> Provenance:
        """The evidence in one file's bytes; no evidence is grade none, never "real"."""


class Expert(CardExpert):
    """One forensic detector. Inputs are RGB uint8 arrays (H, W, 3) at the image's own size:
    frequency experts must see the original pixels, so no resizing happens before an expert."""

    @abstractmethod
    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) for each image, shape (n,)."""

    def predict(self, images: Sequence[np.ndarray]) -> list[ExpertOutput]:
        started = time.perf_counter()
        return self.outputs(self.predict_proba(images), started)

    def outputs(self, probabilities: np.ndarray, started: float, **per_image: Sequence) -> list[ExpertOutput]:
        """One ExpertOutput per image of a batch begun at `started` (time.perf_counter), labelled at
        the card's threshold; `per_image` adds fields, one value per image (e.g. explanation=[...])."""
        per_image_ms = 1000.0 * (time.perf_counter() - started) / max(len(probabilities), 1)
        return [
            ExpertOutput(
                expert=self.name,
                p_fake=float(p),
                label="fake" if p >= self.card.threshold else "real",
                latency_ms=per_image_ms,
                **{field: values[i] for field, values in per_image.items()},
            )
            for i, p in enumerate(probabilities)
        ]


def predict_each(expert: Expert, images: Sequence[np.ndarray]) -> list[ExpertOutput | ErrorInfo]:
    """One batch; when it fails, image by image, so a pathological image costs only its own answer."""
    return _each(expert.predict, images)


def localize_each(localizer: Localizer, images: Sequence[np.ndarray]) -> list[Localization | ErrorInfo]:
    """`localize` with the same per-image fallback as `predict_each`."""
    return _each(localizer.localize, images)


def _each(batch_call: Callable, images: Sequence[np.ndarray]) -> list:
    try:
        return batch_call(images)
    except Exception:
        results = []
        for image in images:
            try:
                results.append(batch_call([image])[0])
            except Exception as error:
                results.append(ErrorInfo(code=ErrorCode.EXPERT_FAILED, message=f"{type(error).__name__}: {error}"))
        return results


class TrainableExpert(Expert):
    """An expert whose weights coe trains itself (`coe experts train`); `meta` records what it was
    trained on (`training_data_hash` among it), which is what its identity changes with."""

    def __init__(self, card: ExpertCard):
        super().__init__(card)
        self.meta: dict = {}

    @property
    def identity(self) -> str:
        return f"{self.card.version}:{self.meta.get('training_data_hash', 'untrained')[:12]}"

    @property
    def needs_fakes(self) -> bool:
        """False for experts that learn from real images alone (a real/ folder is training data enough)."""
        return True

    @abstractmethod
    def fit(self, images: Sequence[np.ndarray], labels: np.ndarray) -> TrainableExpert:
        """Train on images with labels 1 = fake, 0 = real; returns self."""

    @abstractmethod
    def save(self, folder: Path) -> None: ...

    @abstractmethod
    def load(self, folder: Path) -> TrainableExpert: ...


class PretrainedExpert(Expert):
    """An expert with published weights that coe does not train: they come from a local folder or
    file, the Hugging Face hub cache, or the hub (`hf-hub:ORG/REPO`, where a network exists).
    `default_weights` says where coe looks by default, `published_at` where the published checkpoint
    can be obtained; a card's `weights` overrides the default."""

    default_weights: ClassVar[str]
    published_at: ClassVar[str]  # where a user obtains the published weights (a URL)

    def __init__(self, card: ExpertCard):
        super().__init__(card)
        self.weights_digest: str | None = None

    @property
    def identity(self) -> str:
        return f"{self.card.version}:{(self.weights_digest or 'unloaded')[:12]}"

    @abstractmethod
    def load(self, weights: str | Path) -> PretrainedExpert:
        """Load from `weights` (a path, or `hf-hub:ORG/REPO`) and set `weights_digest`; returns self.
        Missing weights raise `experts.weights.WeightsNotFoundError` saying how to obtain them."""

    @classmethod
    @abstractmethod
    def full_size_footprint(cls, params: BaseModel) -> Footprint:
        """Parameters, memory and FLOPs per image of the published architecture under `params`,
        measured on torch's meta device (experts.sizing) without any weights: the card's cost and
        resources are derived from it (tests/test_cards.py), so they cannot drift from the model."""


class Localizer(ABC):
    """A mixin for experts that localise artifacts (pixel masks per phrase) and explain them. coe
    asks them to localise images another expert judged fake (`localize:` in the configuration), so
    a localiser without a published detection head is still useful, and real images are left alone."""

    @abstractmethod
    def localize(self, images: Sequence[np.ndarray]) -> list[Localization]:
        """One Localization per image; masks attached in memory at each image's own size."""


FAMILIES: Registry[type[CardExpert]] = Registry("expert family", "family", "experts")
register_expert = FAMILIES.register


def expert_families() -> dict[str, type[CardExpert]]:
    """Every family: those registered so far and those of every module in the experts package."""
    return FAMILIES.all()


def create_expert(card: ExpertCard) -> CardExpert:
    family = FAMILIES.get(card.family) or _import_family(card.family)
    if family is None:
        raise KeyError(f"expert {card.name!r}: {FAMILIES.unknown(card.family)}")
    return family(card)


def _import_family(family: str) -> type[CardExpert] | None:
    """A built-in family lives in the module of its name (torch and friends load only when a card
    needs them); a family registered elsewhere is found by importing every module."""
    if family.isidentifier() and importlib.util.find_spec(f"experts.{family}") is not None:
        importlib.import_module(f"experts.{family}")
    return FAMILIES.get(family) or FAMILIES.all().get(family)

"""CLIP image features through open_clip, and their on-disk cache.

Where the weights come from is explicit (`ClipSpec.weights`), and features made with random
weights say so: their extractor id ends in `random-seed<N>` and `random_weights` is True, which
every output downstream carries."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from coe.core.errors import UserError
from coe.core.open_clip_hub import cached_open_clip_checkpoint
from coe.core.torchvision_compat import ensure_torchvision_importable

log = logging.getLogger(__name__)

RANDOM_WEIGHTS = "none"
AUTO_WEIGHTS = "auto"
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


_warned: set[str] = set()


def _warn_once(message: str, *args: object) -> None:
    """Each extractor built in a process would say it again (routing, then training, then ...)."""
    text = message % args
    if text not in _warned:
        _warned.add(text)
        log.warning(text)


def _said_already(record: logging.LogRecord) -> bool:
    # open_clip's own notice of random weights; coe has said so, with what to do about it.
    return not record.getMessage().startswith("No pretrained weights loaded for model")


class ClipWeightsNotFoundError(UserError, FileNotFoundError):
    pass


class ClipSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone: str = "ViT-B-32"
    weights: str = Field(
        default=AUTO_WEIGHTS,
        description="auto (hub cache of hub_tag, else random with a warning) | none (random) | an open_clip "
        "pretrained tag | hf-hub:ORG/REPO | local-dir:PATH | a weights file path",
    )
    hub_tag: str = "laion2b_s34b_b79k"
    seed: int = 0
    batch_size: int = Field(default=32, ge=1)
    device: str = "cpu"


def _file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]


class ClipFeatureExtractor:
    """Batched CLIP image embeddings (L2-normalised), built lazily on first use."""

    def __init__(self, spec: ClipSpec):
        self.spec = spec
        self.model_name, self.pretrained, self.random_weights, self.weights_id = self._resolve(spec)

    @staticmethod
    def _resolve(spec: ClipSpec) -> tuple[str, str | None, bool, str]:
        weights = spec.weights
        if weights == AUTO_WEIGHTS:
            ensure_torchvision_importable()
            import open_clip

            cached = cached_open_clip_checkpoint(open_clip.get_pretrained_cfg(spec.backbone, spec.hub_tag))
            if cached is None:
                _warn_once(
                    "CLIP weights %s/%s are not in the hub cache and coe does not download by itself: "
                    "using RANDOM weights (every output is marked random_weights). Set features.weights "
                    "to a file, local-dir:PATH or a tag to download.",
                    spec.backbone,
                    spec.hub_tag,
                )
                weights = RANDOM_WEIGHTS
            else:
                return spec.backbone, str(cached), False, spec.hub_tag
        if weights == RANDOM_WEIGHTS:
            return spec.backbone, None, True, f"random-seed{spec.seed}"
        if weights.startswith(LOCAL_DIR):
            folder = Path(weights.removeprefix(LOCAL_DIR)).expanduser()
            if not folder.is_dir():
                raise ClipWeightsNotFoundError(f"features.weights: folder {folder} does not exist")
            files = sorted(p for p in folder.iterdir() if p.suffix in {".json", ".bin", ".safetensors", ".pth"})
            digest = hashlib.sha256("".join(_file_digest(p) for p in files).encode()).hexdigest()[:16]
            return f"{LOCAL_DIR}{folder}", None, False, f"local-{digest}"
        if weights.startswith(HF_HUB):
            return weights, None, False, weights.removeprefix(HF_HUB).replace("/", "--")
        path = Path(weights).expanduser()
        if path.suffix in {".bin", ".safetensors", ".pt", ".pth"}:
            if not path.is_file():
                raise ClipWeightsNotFoundError(f"features.weights: file {path} does not exist")
            return spec.backbone, str(path), False, f"file-{_file_digest(path)}"
        return spec.backbone, weights, False, weights  # an open_clip pretrained tag

    @property
    def extractor_id(self) -> str:
        backbone = self.model_name.replace("/", "_") if not self.model_name.startswith(LOCAL_DIR) else "local"
        return f"open_clip/{backbone}/{self.weights_id}"

    @cached_property
    def _model_and_preprocess(self):
        ensure_torchvision_importable()
        import open_clip
        import torch

        if self.random_weights:
            torch.manual_seed(self.spec.seed)  # random weights must be the same in every process
        root = logging.getLogger()
        root.addFilter(_said_already)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=self.pretrained, device=self.spec.device
            )
        finally:
            root.removeFilter(_said_already)
        model.eval()
        return model, preprocess

    @cached_property
    def dim(self) -> int:
        return int(self.embed([np.zeros((32, 32, 3), dtype=np.uint8)]).shape[1])

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        model, preprocess = self._model_and_preprocess
        batches = []
        for start in range(0, len(images), self.spec.batch_size):
            chunk = images[start : start + self.spec.batch_size]
            pixels = torch.stack([preprocess(Image.fromarray(image)) for image in chunk])
            with torch.inference_mode():
                features = model.encode_image(pixels.to(self.spec.device), normalize=True)
            batches.append(features.float().cpu().numpy())
        return np.concatenate(batches) if batches else np.zeros((0, 0), dtype=np.float32)


class FeatureCache:
    """Embeddings on disk, keyed by (image id, extractor id), so a second run embeds nothing."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=60)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS features (extractor TEXT, image_id TEXT, vector BLOB, "
            "PRIMARY KEY (extractor, image_id))"
        )

    def get(self, extractor_id: str, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(image_ids), 500):
            chunk = list(image_ids[start : start + 500])
            rows = self._db.execute(
                f"SELECT image_id, vector FROM features WHERE extractor = ? AND image_id IN "
                f"({','.join('?' * len(chunk))})",
                [extractor_id, *chunk],
            )
            found.update((image_id, np.frombuffer(blob, dtype=np.float32)) for image_id, blob in rows)
        return found

    def put(self, extractor_id: str, vectors: dict[str, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?, ?)",
                [(extractor_id, key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in vectors.items()],
            )

    def close(self) -> None:
        self._db.close()


def embed_with_cache(
    extractor: ClipFeatureExtractor | RoutingFeatures, cache: FeatureCache, image_ids: Sequence[str], images: Sequence[np.ndarray]
) -> tuple[np.ndarray, int]:
    """Features for every image, embedding only those not cached; returns (features, n_embedded)."""
    cached = cache.get(extractor.extractor_id, image_ids)
    missing = [i for i, image_id in enumerate(image_ids) if image_id not in cached]
    if missing:
        fresh = extractor.embed([images[i] for i in missing])
        new = {image_ids[i]: vector for i, vector in zip(missing, fresh, strict=True)}
        cache.put(extractor.extractor_id, new)
        cached.update(new)
    return np.stack([cached[image_id] for image_id in image_ids]), len(missing)


Descriptor = Callable[[Sequence[np.ndarray]], np.ndarray]


class RoutingFeatures:
    """What the router reads: the CLIP embedding (content), followed by cheap forensic descriptors
    (signal statistics such as a radial spectrum) that tell the router which artifacts an image
    carries, and so which expert is likely to be right. Random-weight CLIP carries little of that."""

    def __init__(self, clip: ClipFeatureExtractor, descriptors: dict[str, tuple[str, Descriptor]]):
        self.clip = clip
        self.descriptors = descriptors

    @property
    def extractor_id(self) -> str:
        parts = [self.clip.extractor_id, *(f"{name}@{identity}" for name, (identity, _) in self.descriptors.items())]
        return "+".join(parts)

    @property
    def random_weights(self) -> bool:
        return self.clip.random_weights

    @cached_property
    def descriptor_columns(self) -> int:
        """How many columns the forensic descriptors take at the end of each feature vector."""
        probe = [np.zeros((64, 64, 3), dtype=np.uint8)]
        return sum(np.asarray(describe(probe)).shape[1] for _, describe in self.descriptors.values())

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        parts = [self.clip.embed(images)]
        parts += [np.asarray(describe(images), dtype=np.float32) for _, describe in self.descriptors.values()]
        return np.concatenate(parts, axis=1)

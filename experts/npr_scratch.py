"""NPR trained here, from scratch: the network of `experts.npr` (Tan et al. CVPR 2024) with random
initial weights, taught on the user's images or the built-in benchmark's instead of loading the
published ProGAN checkpoint. NPR reads only the neighbouring-pixel residual, the trace a decoder's
up-sampling leaves, so a network taught on one decoder's outputs may recognise others: the paper
reports 91.7% mean accuracy on 16 unseen generators when trained on ProGAN alone.

Training follows CNNDetection's recipe on a small budget: random even-aligned square crops (the
2x2 grid NPR reads stays whole), horizontal flips, a JPEG re-encoding for half of the crops and a
slight Gaussian blur for a few, so that neither a codec nor a blur decides; each step takes as many
real crops as fake ones. Inference sees the image at its own size, as `experts.npr` does. Training
is deterministic for a given seed on one machine (torch's deterministic algorithms)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from pydantic import Field

from experts.base import (
    DeviceParams,
    ExpertNotTrainedError,
    TrainableExpert,
    TrainingDataError,
    register_expert,
)
from experts.classic import META_FILE, read_trained_meta, trained_meta
from experts.npr import NPRNetwork, imagenet_normalised, score_images
from experts.weights import WeightsFormatError, resolve_device

MODEL_FILE = "npr.safetensors"


class ScratchNPRParams(DeviceParams):
    batch_size: int = Field(default=16, ge=1, description="images of one size scored together")
    max_side: int | None = Field(
        default=1024, ge=2, description="larger images are centre-cropped to this, never resized; null: whole image"
    )
    steps: int = Field(default=800, ge=1, description="optimiser steps when training")
    crop: int = Field(default=64, ge=8, multiple_of=2, description="side of the training crops")
    pairs_per_step: int = Field(default=16, ge=1, description="real crops per step, and as many fake ones")
    learning_rate: float = Field(default=2e-4, gt=0.0)
    jpeg_share: float = Field(default=0.5, ge=0.0, le=1.0, description="training crops re-encoded as JPEG")
    jpeg_quality: tuple[int, int] = Field(default=(65, 95), description="the range their quality is drawn from")
    blur_share: float = Field(default=0.1, ge=0.0, le=1.0, description="training crops blurred slightly")
    blur_sigma: float = Field(default=1.0, ge=0.0, description="the largest Gaussian blur sigma, in pixels")
    seed: int = 0


@register_expert("npr_scratch")
class ScratchNPRExpert(TrainableExpert):
    Params = ScratchNPRParams
    params: ScratchNPRParams

    def __init__(self, card):
        super().__init__(card)
        self.network: NPRNetwork | None = None
        self.device = resolve_device(self.params.device)

    def fit(self, images: Sequence[np.ndarray], labels: np.ndarray) -> ScratchNPRExpert:
        labels = np.asarray(labels, dtype=int)
        side = self.params.crop
        usable = np.array([min(image.shape[:2]) >= side for image in images])
        by_class = {label: np.flatnonzero((labels == label) & usable) for label in (0, 1)}
        if min(len(indices) for indices in by_class.values()) < 2:
            raise TrainingDataError(
                f"expert {self.name!r} needs at least 2 real and 2 fake images of {side}x{side} pixels or more, "
                f"got {len(by_class[0])} real and {len(by_class[1])} fake"
            )
        rng = np.random.default_rng(self.params.seed)
        loss_function = torch.nn.BCEWithLogitsLoss()
        targets = torch.cat([torch.zeros(self.params.pairs_per_step), torch.ones(self.params.pairs_per_step)])
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        losses = []
        try:
            torch.manual_seed(self.params.seed)
            network = NPRNetwork().to(self.device).train()
            optimiser = torch.optim.Adam(network.parameters(), lr=self.params.learning_rate)
            for _ in range(self.params.steps):
                chosen = [rng.choice(by_class[label], self.params.pairs_per_step) for label in (0, 1)]
                crops = [self._training_crop(images[i], rng) for i in np.concatenate(chosen)]
                batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(self.device)
                loss = loss_function(network(batch).squeeze(1), targets.to(self.device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(loss.item())
        finally:
            torch.use_deterministic_algorithms(deterministic)
        self.network = network.eval()
        tail = losses[-max(len(losses) // 10, 1) :]
        self.meta = trained_meta(
            self, [image for image, keep in zip(images, usable, strict=True) if keep], labels[usable],
            {"final_loss": float(np.mean(tail)), "steps": self.params.steps},
        )
        return self

    def _training_crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        side = self.params.crop
        top = 2 * rng.integers(0, (image.shape[0] - side) // 2 + 1)
        left = 2 * rng.integers(0, (image.shape[1] - side) // 2 + 1)
        crop = image[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        picture = Image.fromarray(np.ascontiguousarray(crop))
        if rng.random() < self.params.blur_share:
            picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, self.params.blur_sigma)))
        if rng.random() < self.params.jpeg_share:
            encoded = io.BytesIO()
            low, high = self.params.jpeg_quality
            picture.save(encoded, "JPEG", quality=int(rng.integers(low, high + 1)))
            picture = Image.open(encoded).convert("RGB")
        return imagenet_normalised(np.asarray(picture))

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.network is None:
            raise ExpertNotTrainedError(
                f"expert {self.name!r} has no trained weights: run `coe experts train {self.name} --data DIR`"
            )
        return score_images(
            self.network, images, self.params.max_side, self.params.batch_size, self.device, torch.float32
        )

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.network is None:
            raise ExpertNotTrainedError(f"expert {self.name!r} is not trained; nothing to save")
        folder.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in self.network.state_dict().items()}, folder / MODEL_FILE)
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2))

    def load(self, folder: Path) -> ScratchNPRExpert:
        from safetensors.torch import load_file

        meta = read_trained_meta(self, folder, MODEL_FILE)
        network = NPRNetwork()
        try:
            network.load_state_dict(load_file(folder / MODEL_FILE), strict=True)
        except RuntimeError as error:
            raise WeightsFormatError(f"expert {self.name!r}: {folder / MODEL_FILE} is not an NPR network: {error}") from error
        self.network = network.to(self.device).eval()
        self.meta = meta
        return self

"""NPR expert (Tan et al. 2024, "Rethinking the Up-Sampling Operations in CNN-based Generative
Network for Generalizable Deepfake Detection", CVPR): a CNN that never sees the image, only its
neighbouring-pixel relations x - up(down(x)), where down keeps the top-left pixel of every 2x2 block
and up repeats it. Generators up-sample their feature maps, which ties the pixels of a 2x2 block to
each other in ways cameras do not; the residual keeps that trace and drops the content.

The network and its preprocessing follow chuangchuangtan/NPR-DeepfakeDetection so that the
published NPR.pth loads strictly and scores as upstream: the residual, times 2/3, goes into the
first two stages of a ResNet-50 (3x3 stride-2 stem) and a 512 -> 1 head; ImageNet normalisation;
the image at its own size, as upstream evaluates on AIGCDetectBenchmark, with the last row or
column dropped when a side is odd (the 2x2 grid needs even sides; upstream's README does the same)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from experts.base import PretrainedExpert, TorchDtype, TorchParams, register_expert
from experts.sizing import Footprint, count_parameters_and_flops
from experts.weights import (
    WeightsFormatError,
    WeightsNotFoundError,
    locate_weights,
    resolve_device,
    resolve_dtype,
    weights_digest,
)

CHECKPOINT_FILE = "NPR.pth"
PUBLISHED_REPOSITORY = "https://github.com/chuangchuangtan/NPR-DeepfakeDetection"
PUBLISHED_CHECKPOINT_URL = f"{PUBLISHED_REPOSITORY}/blob/main/{CHECKPOINT_FILE}"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Upstream scales the residual by this before the first convolution; the published weights expect it.
RESIDUAL_SCALE = 2.0 / 3.0
# ResNet-50's block counts for the two stages NPR keeps.
STAGE_BLOCKS = (3, 4)
# The footprint's reference input: the 256x256 upstream resizes its ForenSynths test images to.
REFERENCE_SIDE = 256
# The published file wraps the weights of a DataParallel model: {"model": {"module.conv1.weight": ...}}.
WRAPPER_KEY = "model"
DATA_PARALLEL_PREFIX = "module."


class Bottleneck(nn.Module):
    """ResNet's 1x1 -> 3x3 (strided) -> 1x1 block, four times wider at the output."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def neighbouring_pixel_residual(x: torch.Tensor) -> torch.Tensor:
    """x minus each 2x2 block's top-left pixel: nearest down-sampling by 2 then nearest up-sampling,
    as upstream's F.interpolate(scale_factor=0.5, mode="nearest") does. Sides must be even."""
    anchors = x[..., ::2, ::2].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return x - anchors


class NPRNetwork(nn.Module):
    """Upstream's `resnet50(num_classes=1)` from networks/resnet.py; its module names are the keys of
    NPR.pth. Input: ImageNet-normalised RGB (n, 3, H, W) with even H and W; output: one logit each."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, STAGE_BLOCKS[0], stride=1)
        self.layer2 = _stage(256, 128, STAGE_BLOCKS[1], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(neighbouring_pixel_residual(x) * RESIDUAL_SCALE)
        x = self.maxpool(self.relu(self.bn1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc1(torch.flatten(self.avgpool(x), 1))


def unwrap_checkpoint(checkpoint: object, source: Path) -> dict[str, torch.Tensor]:
    """The network's state dict from either upstream layout: the bare state dict its trainer saves and
    its test.py loads, or the published NPR.pth's {"model": state dict of a DataParallel model, ...}
    (the other entries are training state). The "module." prefix goes only when every key has it."""
    if not isinstance(checkpoint, dict):
        raise WeightsFormatError(f"{source} holds a {type(checkpoint).__name__}, not an NPR state dict")
    state = checkpoint.get(WRAPPER_KEY, checkpoint)
    if not isinstance(state, dict):
        raise WeightsFormatError(f"{source}: {WRAPPER_KEY!r} holds a {type(state).__name__}, not a state dict")
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        state = {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state.items()}
    return state


def even_centre_crop(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image with even sides: the last row/column dropped where a side is odd, as upstream does;
    larger than max_side, the central part, cut at an even offset so every 2x2 block stays whole."""
    height, width = image.shape[:2]
    limit = max_side if max_side is not None else max(height, width)
    crop_height, crop_width = min(height, limit) // 2 * 2, min(width, limit) // 2 * 2
    if crop_height == 0 or crop_width == 0:
        raise ValueError(f"NPR needs at least 2x2 pixels, got {height}x{width}")
    # A side cut only to be even keeps offset 0 (its margin is 0 or 1), so its last row/column goes.
    top, left = (height - crop_height) // 4 * 2, (width - crop_width) // 4 * 2
    return image[top : top + crop_height, left : left + crop_width]


def imagenet_normalised(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32, ImageNet mean and std, as the network's input expects."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return (pixels / np.float32(255.0) - mean) / std


def score_images(
    network: NPRNetwork, images: Sequence[np.ndarray], max_side: int | None, batch_size: int,
    device: torch.device, dtype: torch.dtype,
) -> np.ndarray:
    """P(fake) of each image at its own size (even_centre_crop), images of one size batched together."""
    pixels = [imagenet_normalised(even_centre_crop(image, max_side)) for image in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, array in enumerate(pixels):
        by_size.setdefault(array.shape[:2], []).append(index)
    probabilities = np.zeros(len(images), dtype=np.float64)
    with torch.inference_mode():
        for indices in by_size.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = torch.from_numpy(np.stack([pixels[i] for i in chunk])).permute(0, 3, 1, 2)
                logits = network(batch.to(device, dtype))
                probabilities[chunk] = torch.sigmoid(logits.float()).squeeze(1).cpu().numpy()
    return probabilities


class NPRParams(TorchParams):
    dtype: TorchDtype = Field(default="float32", description="upstream runs float32; auto: bfloat16 on a GPU")
    batch_size: int = Field(default=16, ge=1, description="images of the same size run together")
    max_side: int | None = Field(
        default=1024,
        ge=2,
        description="larger images are centre-cropped to this, never resized (resizing rewrites the pixel "
        "relations NPR reads); null: the whole image, as upstream",
    )


@register_expert("npr")
class NPRExpert(PretrainedExpert):
    Params = NPRParams
    params: NPRParams
    default_weights: ClassVar[str] = f"experts/npr/{CHECKPOINT_FILE}"
    published_at: ClassVar[str] = PUBLISHED_CHECKPOINT_URL

    def __init__(self, card):
        super().__init__(card)
        self.network: NPRNetwork | None = None

    def load(self, weights: str | Path) -> NPRExpert:
        try:
            path = locate_weights(weights, self.name, required=(CHECKPOINT_FILE,))
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(
                f"{error}; the published checkpoint is {CHECKPOINT_FILE} in the root of the "
                f"NPR-DeepfakeDetection repository ({PUBLISHED_CHECKPOINT_URL}, the file its README tests "
                f"with); download it to {weights} or set the card's `weights:` to where it is"
            ) from error
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        state = unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True), path)
        network = NPRNetwork()
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise WeightsFormatError(f"expert {self.name!r}: {path} is not an NPR checkpoint: {error}") from error
        self.device = resolve_device(self.params.device)
        self.dtype = resolve_dtype(self.params.dtype, self.device)
        self.network = network.to(self.device, self.dtype).eval()
        self.weights_digest = weights_digest(path)
        return self

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.network is None:
            raise RuntimeError(f"expert {self.name!r}: call load() before predicting")
        return score_images(self.network, images, self.params.max_side, self.params.batch_size, self.device, self.dtype)

    @classmethod
    def full_size_footprint(cls, params: NPRParams) -> Footprint:
        """The published network on one 256x256 image, float32 as upstream runs it."""
        side = REFERENCE_SIDE

        def forward(network: NPRNetwork) -> None:
            network(torch.empty(1, 3, side, side, device="meta"))

        parameters, gflops = count_parameters_and_flops(NPRNetwork, forward)
        return Footprint(parameters=parameters, forward_gflops=gflops, dtype="float32")

"""The built-in benchmark's `autoencoder` fakes: real crops reconstructed by a small convolutional
autoencoder trained here, on the benchmark's own real crops, when the benchmark is built.

A reconstruction keeps its real crop's content and loses only what the decoder cannot give back,
and it carries the decoder's own trace. Training detectors on real images against such aligned
reconstructions (Rajan et al. ICLR 2025, "Aligned Datasets Improve Detection of Latent Diffusion-
Generated Images"; Guillaro et al. CVPR 2025, B-Free) makes them learn the generator's decoder and
nothing about content or format. The real studies use the latent-diffusion autoencoder itself; none
can be downloaded here, so this one is built like it, much smaller: an encoder to a 4-channel
latent at 1/8 of the resolution (the f8 of LDM-KL-8, Stable Diffusion and SDXL), and a decoder of
nearest-neighbour up-sampling, 3x3 convolutions and ResNet blocks with GroupNorm and SiLU, trained
for an L1 reconstruction loss.

It makes the built-in benchmark's default fakes because the triage experts trained on them carry
over to real generators, and those trained on the simulators do not (README, "The wild check")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

LATENT_CHANNELS = 4
GROUPS = 8


class AutoencoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    downsamplings: int = Field(default=3, ge=1, le=5, description="the latent is 1 / 2**downsamplings of the image")
    channels: int = Field(default=32, ge=GROUPS, multiple_of=GROUPS)
    steps: int = Field(default=1000, ge=1, description="training steps (about 60 s on 2 cores at the defaults)")
    batch_size: int = Field(default=8, ge=1)
    crop: int = Field(default=64, ge=8, description="side of the random training crops")
    learning_rate: float = Field(default=2e-3, gt=0)


def _network(config: AutoencoderConfig):
    from torch import nn

    width = config.channels

    class ResnetBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(
                nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            )

        def forward(self, x):
            return x + self.body(x)

    encoder = [nn.Conv2d(3, width, 3, padding=1)]
    for _ in range(config.downsamplings):
        encoder += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
    encoder += [ResnetBlock(), nn.Conv2d(width, LATENT_CHANNELS, 3, padding=1)]
    decoder = [nn.Conv2d(LATENT_CHANNELS, width, 3, padding=1), ResnetBlock()]
    for _ in range(config.downsamplings):
        decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
    decoder += [ResnetBlock(), nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1)]
    return nn.Sequential(*encoder, *decoder)


class Autoencoder:
    """Trained by `fit`; `reconstruct` gives a crop back as the decoder makes it."""

    def __init__(self, config: AutoencoderConfig | None = None, seed: int = 0):
        self.config = config or AutoencoderConfig()
        self.seed = seed
        self.network = None

    def fit(self, images: Sequence[np.ndarray]) -> Autoencoder:
        import torch

        config = self.config
        side = min(min(image.shape[:2]) for image in images)
        crop = min(config.crop, side) // 2**config.downsamplings * 2**config.downsamplings
        if crop == 0:
            raise ValueError(f"images of {side} px are too small for {config.downsamplings} down-samplings")
        rng = np.random.default_rng(self.seed)
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            torch.manual_seed(self.seed)
            self.network = _network(config)
            optimiser = torch.optim.Adam(self.network.parameters(), lr=config.learning_rate)
            for _ in range(config.steps):
                batch = []
                for index in rng.integers(0, len(images), config.batch_size):
                    image = images[index]
                    top, left = (rng.integers(0, image.shape[axis] - crop + 1) for axis in (0, 1))
                    batch.append(image[top : top + crop, left : left + crop])
                x = _to_tensor(np.stack(batch))
                loss = (self.network(x) - x).abs().mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        finally:
            torch.use_deterministic_algorithms(deterministic)
        self.network.eval()
        return self

    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        """The image through the autoencoder, uint8, at its own size (sides cropped to a multiple of
        the latent's stride are padded back from the edge)."""
        import torch

        if self.network is None:
            raise RuntimeError("the autoencoder is not trained")
        stride = 2**self.config.downsamplings
        height, width = image.shape[0] // stride * stride, image.shape[1] // stride * stride
        with torch.no_grad():
            decoded = self.network(_to_tensor(image[None, :height, :width]))[0]
        pixels = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        return np.pad(pixels, ((0, image.shape[0] - height), (0, image.shape[1] - width), (0, 0)), mode="edge")


def _to_tensor(batch: np.ndarray):
    import torch

    # astype copies: decoded images may be read-only arrays, which torch will not wrap.
    return torch.from_numpy(np.asarray(batch).astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0

"""UnivFD expert (Ojha et al. 2023, "Towards Universal Fake Image Detectors that Generalize Across
Generative Models", CVPR): a single linear layer on the CLIP ViT-L/14 image embedding. CLIP was
never trained to tell real from fake, so its feature space is not tuned to one generator's traces;
a probe in it generalises to generators it was not trained on.

Everything follows WisconsinAIVision/UniversalFakeDetect so that its fc_weights.pth scores as
upstream: OpenAI's CLIP ViT-L/14 (QuickGELU) in float32, the embedding unnormalised, and the
validation transform CenterCrop(224) -> ToTensor -> CLIP normalisation. There is no resizing: a
larger image is judged by its central 224x224 pixels only, and a smaller one is padded with black
around it, as torchvision's CenterCrop does in upstream's evaluation."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from coe.core.open_clip_hub import cached_open_clip_checkpoint
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

PROBE_FILE = "fc_weights.pth"
PUBLISHED_PROBE_URL = (
    f"https://github.com/WisconsinAIVision/UniversalFakeDetect/blob/main/pretrained_weights/{PROBE_FILE}"
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOCAL_DIR = "local-dir:"
OPEN_CLIP_CONFIG = "open_clip_config.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class UnivFDParams(TorchParams):
    dtype: TorchDtype = Field(
        default="float32",
        description="upstream trains and evaluates the probe in float32; auto: bfloat16 on a GPU",
    )
    batch_size: int = Field(default=32, ge=1, description="images run through the network together")
    clip_model: str = Field(
        default="ViT-L-14",
        description="the open_clip architecture a pretrained tag or a weights file is loaded into",
    )
    clip_weights: str = Field(
        default="openai",
        description="an open_clip pretrained tag of clip_model (from the Hugging Face hub cache; downloaded "
        "only where a network exists) | local-dir:PATH (an open_clip folder with open_clip_config.json) | a "
        "weights file: OpenAI's ViT-L-14.pt or an open_clip state dict",
    )
    force_quick_gelu: bool = Field(
        default=True,
        description="QuickGELU activations, as in OpenAI's CLIP, whose features the published probe was "
        "trained on; false: whatever the model config says",
    )


def centre_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's CenterCrop on the uint8 image: a side shorter than the crop is first padded with
    black, split evenly (the extra pixel after); a longer one is cut at round((side - crop) / 2)."""
    short_height, short_width = max(height - image.shape[0], 0), max(width - image.shape[1], 0)
    if short_height or short_width:
        rows = (short_height // 2, (short_height + 1) // 2)
        columns = (short_width // 2, (short_width + 1) // 2)
        image = np.pad(image, (rows, columns, (0, 0)))
    top = int(round((image.shape[0] - height) / 2.0))
    left = int(round((image.shape[1] - width) / 2.0))
    return image[top : top + height, left : left + width]


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's own checkpoints (ViT-L-14.pt) are TorchScript archives, which torch.load refuses to
    read as weights; open_clip rebuilds the model from them instead."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(PurePosixPath(name).name == "constants.pkl" for name in archive.namelist())


@register_expert("univfd")
class UnivFDExpert(PretrainedExpert):
    Params = UnivFDParams
    params: UnivFDParams
    default_weights: ClassVar[str] = f"experts/univfd/{PROBE_FILE}"
    published_at: ClassVar[str] = PUBLISHED_PROBE_URL

    def __init__(self, card):
        super().__init__(card)
        self.visual: nn.Module | None = None
        self.probe: nn.Linear | None = None

    def load(self, weights: str | Path) -> UnivFDExpert:
        probe_path = self._locate_probe(weights)
        probe_state = torch.load(probe_path, map_location="cpu", weights_only=True)
        visual, backbone_path = self._load_backbone()
        probe = nn.Linear(visual.output_dim, 1)
        try:
            probe.load_state_dict(probe_state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as error:
            raise WeightsFormatError(
                f"expert {self.name!r}: {probe_path} is not a UnivFD probe for a {visual.output_dim}-d "
                f"CLIP embedding (upstream saves the state dict of Linear({visual.output_dim}, 1): weight "
                f"and bias): {error}"
            ) from error
        self.device = resolve_device(self.params.device)
        self.dtype = resolve_dtype(self.params.dtype, self.device)
        self.visual = visual.to(self.device, self.dtype).eval()
        self.probe = probe.to(self.device, self.dtype).eval()
        size = visual.image_size
        self.crop_size = (size, size) if isinstance(size, int) else tuple(size)
        both = f"{weights_digest(probe_path)}:{weights_digest(backbone_path)}"
        self.weights_digest = hashlib.sha256(both.encode()).hexdigest()
        return self

    def _locate_probe(self, weights: str | Path) -> Path:
        how = (
            f"the published probe is {PROBE_FILE}, in the UniversalFakeDetect repository under "
            f"pretrained_weights/ ({PUBLISHED_PROBE_URL}); download it to {weights} or set the card's "
            "`weights:` to where it is"
        )
        try:
            path = locate_weights(weights, self.name, required=(PROBE_FILE,))
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(f"{error}; {how}") from error
        return path / PROBE_FILE if path.is_dir() else path

    def _load_backbone(self) -> tuple[nn.Module, Path]:
        """CLIP's image tower (the text tower is dropped) and the file or folder it came from."""
        from coe.core.torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        import open_clip

        reference = self.params.clip_weights
        build = dict(force_quick_gelu=self.params.force_quick_gelu, require_pretrained=True)
        if reference.startswith(LOCAL_DIR):
            folder = Path(reference.removeprefix(LOCAL_DIR)).expanduser()
            if not (folder / OPEN_CLIP_CONFIG).is_file():
                raise WeightsNotFoundError(
                    f"expert {self.name!r}: {folder} is not an open_clip folder (no {OPEN_CLIP_CONFIG}); "
                    f"{self._backbone_how()}"
                )
            return open_clip.create_model(f"{LOCAL_DIR}{folder}", **build).visual, folder
        path = Path(reference).expanduser()
        if path.suffix in CHECKPOINT_SUFFIXES or path.exists():
            if not path.is_file():
                raise WeightsNotFoundError(
                    f"expert {self.name!r}: no CLIP weights file at {path}; {self._backbone_how()}"
                )
            if _is_torchscript_archive(path):
                return open_clip.load_openai_model(str(path), precision="fp32", device="cpu").visual, path
            return open_clip.create_model(self.params.clip_model, pretrained=str(path), **build).visual, path
        checkpoint = self._tag_checkpoint(reference)
        model = open_clip.create_model(self.params.clip_model, pretrained=str(checkpoint), **build)
        return model.visual, checkpoint

    def _tag_checkpoint(self, tag: str) -> Path:
        import open_clip
        from huggingface_hub import constants

        pretrained_cfg = open_clip.get_pretrained_cfg(self.params.clip_model, tag)
        if not pretrained_cfg:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(self.params.clip_model)) or "none"
            raise WeightsFormatError(
                f"expert {self.name!r}: {tag!r} is not an open_clip pretrained tag of "
                f"{self.params.clip_model} (known: {known}), a local-dir: folder or a weights file"
            )
        cached = cached_open_clip_checkpoint(pretrained_cfg)
        if cached is not None:
            return cached
        missing = (
            f"expert {self.name!r}: CLIP {self.params.clip_model}/{tag} is not in the hub cache "
            f"({constants.HF_HUB_CACHE})"
        )
        how = self._backbone_how(pretrained_cfg)
        if constants.HF_HUB_OFFLINE:
            raise WeightsNotFoundError(f"{missing} and HF_HUB_OFFLINE is set; {how}")
        try:
            return Path(open_clip.download_pretrained(pretrained_cfg))
        except Exception as error:
            raise WeightsNotFoundError(
                f"{missing} and could not be downloaded ({type(error).__name__}); {how}"
            ) from error

    def _backbone_how(self, pretrained_cfg: dict | None = None) -> str:
        import open_clip

        pretrained_cfg = pretrained_cfg or open_clip.get_pretrained_cfg("ViT-L-14", "openai")
        repo = pretrained_cfg.get("hf_hub", "").rstrip("/")
        return (
            f"UnivFD needs OpenAI's CLIP ViT-L/14: where a network exists run `hf download {repo}` to fill "
            "the hub cache (or add --local-dir DIR and set params.clip_weights to local-dir:DIR), or "
            f"download OpenAI's checkpoint {pretrained_cfg.get('url', '')} and set params.clip_weights to "
            "its path"
        )

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if self.visual is None or self.probe is None:
            raise RuntimeError(f"expert {self.name!r}: call load() before predicting")
        mean = np.asarray(CLIP_MEAN, dtype=np.float32)
        std = np.asarray(CLIP_STD, dtype=np.float32)
        probabilities = []
        with torch.inference_mode():
            for start in range(0, len(images), self.params.batch_size):
                chunk = images[start : start + self.params.batch_size]
                crops = np.stack([centre_crop(image, *self.crop_size) for image in chunk])
                pixels = torch.from_numpy((crops / np.float32(255.0) - mean) / std).permute(0, 3, 1, 2)
                logits = self.probe(self.visual(pixels.to(self.device, self.dtype)))
                probabilities.append(torch.sigmoid(logits.float()).squeeze(1).cpu().numpy())
        return np.concatenate(probabilities).astype(np.float64) if probabilities else np.zeros(0)

    @classmethod
    def full_size_footprint(cls, params: UnivFDParams) -> Footprint:
        """The image tower of clip_model (ViT-L/14: 224x224, 16x16 patches of 14) and the probe, float32."""
        from coe.core.torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        import open_clip

        config = open_clip.get_model_config(params.clip_model)
        if config is None:
            raise ValueError(f"open_clip has no model config {params.clip_model!r}")
        config["quick_gelu"] = config.get("quick_gelu", False) or params.force_quick_gelu
        side = config["vision_cfg"]["image_size"]

        def build() -> nn.ModuleDict:
            return nn.ModuleDict(
                {"visual": open_clip.model.CLIP(**config).visual, "probe": nn.Linear(config["embed_dim"], 1)}
            )

        def forward(model: nn.ModuleDict) -> None:
            model["probe"](model["visual"](torch.empty(1, 3, side, side, device="meta")))

        parameters, gflops = count_parameters_and_flops(build, forward)
        return Footprint(parameters=parameters, forward_gflops=gflops, dtype="float32")

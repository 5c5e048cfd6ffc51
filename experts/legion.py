"""LEGION (Kang et al. 2025, "LEGION: Learning to Ground and Explain for Synthetic Image Detection"):
a GLaMM grounding model fine-tuned on SynthScars to describe an image's synthesis artifacts and
segment each one.

GLaMM, rebuilt from transformers classes: a LLaVA-1.5 model (Vicuna-7B, CLIP ViT-L/14-336 whose
penultimate-layer patch features go through a two-layer GELU projector) answers a fixed
instruction; every `[SEG]` token it writes marks the phrase before it (`<p> phrase </p> [SEG]`).
The last hidden state of the position that emitted `[SEG]` goes through `text_hidden_fcs`
(4096 -> 4096 -> 256) into SAM ViT-H's mask decoder as a sparse prompt, one mask per `[SEG]`.

The published checkpoint (`khr0516/legion_LE`) localises and explains; LEGION's detector, a
separate MLP on CLIP's CLS feature, was not published, so detection needs a `detection_head` file.
How upstream key names map onto these modules: docs/legion_checkpoint.md."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from coe.core.records import Artifact, ArtifactCategory, ExpertOutput, Localization
from coe.core.torchvision_compat import ensure_torchvision_importable
from experts.base import ExpertCard, Localizer, PretrainedExpert, TorchParams, register_expert
from experts.sizing import Footprint, count_parameters_and_flops
from experts.weights import (
    WeightsFormatError,
    WeightsNotFoundError,
    locate_weights,
    resolve_device,
    resolve_dtype,
    weights_digest,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# opendatalab/LEGION infer_loc_exp.py: the instruction, wrapped as GLaMM wraps every image question
# ("The <image> provides an overview of the picture.\n" with <im_start>/<im_end> around the image)
# in the llava_v1 conversation template of model/llava/conversation.py.
INSTRUCTION = (
    "Please provide a detailed analysis of artifacts in this photo, considering physical artifacts "
    "(e.g., optical display issues, violations of physical laws, and spatial/perspective errors), "
    "structural artifacts (e.g., deformed objects, asymmetry, or distorted text), and distortion "
    "artifacts (e.g., color/texture distortion, noise/blur, artistic style errors, and material "
    "misrepresentation). Output with interleaved segmentation masks for the corresponding parts of "
    "the answer."
)
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE_SLOT = "<image>"
PROMPT = (
    f"{SYSTEM_PROMPT} USER: The <im_start>{IMAGE_SLOT}<im_end> provides an overview of the picture.\n"
    f"{INSTRUCTION} ASSISTANT:"
)
SEG_TOKEN = "[SEG]"
# segment_anything's normalisation (model/SAM sam.py), applied before SAM's 1024 padding
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
VISION_FEATURE_SELECT = "default"  # GLaMM's CLIPVisionTower drops CLS ("patch"): 576 image tokens at 336 px
LEGION_HUB = "khr0516/legion_LE"
CLIP_HUB = "openai/clip-vit-large-patch14-336"


class TextArchitecture(BaseModel):
    """The LLaMA language model; full size is Vicuna-7B with GLaMM's 7 added tokens (<im_start>,
    <im_end>, <bbox>, <point>, [SEG], <p>, </p>). A checkpoint's config.json overrides these."""

    model_config = ConfigDict(extra="forbid")
    vocab_size: int = 32007
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0

    @classmethod
    def from_upstream_config(cls, config: dict) -> TextArchitecture:
        """From GLaMM's config.json (a LlamaConfig subclass); optional fields take LlamaConfig's defaults."""
        required = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        absent = [name for name in required if name not in config]
        if absent:
            raise WeightsFormatError(f"LEGION config.json lacks {', '.join(absent)}")
        return cls(
            **{name: config[name] for name in required},
            num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            rope_theta=config.get("rope_theta", 10000.0),
        )


class VisionArchitecture(BaseModel):
    """The CLIP vision tower; full size is openai/clip-vit-large-patch14-336."""

    model_config = ConfigDict(extra="forbid")
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SamArchitecture(BaseModel):
    """The SAM grounding encoder. GLaMM builds segment_anything's ViT-H (`build_sam_vit_h`) in code,
    so its sizes are not in config.json; these defaults are ViT-H's."""

    model_config = ConfigDict(extra="forbid")
    image_size: int = 1024
    patch_size: int = 16
    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    global_attn_indexes: list[int] = [7, 15, 23, 31]
    window_size: int = 14
    prompt_dim: int = Field(
        default=256, description="image embedding channels = prompt width = text_hidden_fcs output"
    )
    mask_input_channels: int = 16
    decoder_mlp_dim: int = 2048
    decoder_layers: int = 2
    decoder_heads: int = 8


class LegionArchitecture(BaseModel):
    """Every size of the model in one place: the full-size published architecture by default, tiny
    in tests."""

    model_config = ConfigDict(extra="forbid")
    text: TextArchitecture = TextArchitecture()
    vision: VisionArchitecture = VisionArchitecture()
    sam: SamArchitecture = SamArchitecture()
    vision_feature_layer: int = Field(default=-2, description="GLaMM's mm_vision_select_layer")

    def llava_config(self):
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

        text = LlamaConfig(**self.text.model_dump(), tie_word_embeddings=False)
        vision = CLIPVisionConfig(**self.vision.model_dump())
        # image_token_id is never used: coe places the image features into inputs_embeds itself, because
        # GLaMM's vocabulary has no <image> token (upstream splices features where id -200 stands).
        return LlavaConfig(
            text_config=text,
            vision_config=vision,
            vision_feature_layer=self.vision_feature_layer,
            vision_feature_select_strategy=VISION_FEATURE_SELECT,
            projector_hidden_act="gelu",
            multimodal_projector_bias=True,
            image_token_id=0,
            tie_word_embeddings=False,
        )

    def sam_config(self):
        from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

        sam = self.sam
        return SamConfig(
            vision_config=SamVisionConfig(
                hidden_size=sam.hidden_size,
                num_hidden_layers=sam.num_hidden_layers,
                num_attention_heads=sam.num_attention_heads,
                global_attn_indexes=sam.global_attn_indexes,
                window_size=sam.window_size,
                image_size=sam.image_size,
                patch_size=sam.patch_size,
                output_channels=sam.prompt_dim,
                num_pos_feats=sam.prompt_dim // 2,
            ),
            prompt_encoder_config=SamPromptEncoderConfig(
                hidden_size=sam.prompt_dim,
                image_size=sam.image_size,
                patch_size=sam.patch_size,
                mask_input_channels=sam.mask_input_channels,
            ),
            mask_decoder_config=SamMaskDecoderConfig(
                hidden_size=sam.prompt_dim,
                mlp_dim=sam.decoder_mlp_dim,
                num_hidden_layers=sam.decoder_layers,
                num_attention_heads=sam.decoder_heads,
                iou_head_hidden_dim=sam.prompt_dim,
            ),
        )


class LegionModel(torch.nn.Module):
    """GLaMM as LEGION runs it: `llava` (LlavaForConditionalGeneration), `text_hidden_fcs` (wrapped in a
    ModuleList as upstream wraps it, so the names match) and `sam` (SamModel)."""

    def __init__(self, architecture: LegionArchitecture):
        super().__init__()
        ensure_torchvision_importable()
        from transformers import LlavaForConditionalGeneration, SamModel

        self.architecture = architecture
        self.llava = LlavaForConditionalGeneration(architecture.llava_config())
        width = architecture.text.hidden_size
        self.text_hidden_fcs = torch.nn.ModuleList(
            [
                torch.nn.Sequential(
                    torch.nn.Linear(width, width),
                    torch.nn.ReLU(),
                    torch.nn.Linear(width, architecture.sam.prompt_dim),
                )
            ]
        )
        self.sam = SamModel(architecture.sam_config())

    def encode_image(self, clip_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(projected patch features for the LLM (B, N, D), the same layer's CLS feature (B, Dv), which
        LEGION's detection head reads: hidden_states[-2][:, 0] in model/Legion.py)."""
        layer = self.architecture.vision_feature_layer
        out = self.llava.model.get_image_features(
            pixel_values=clip_pixels,
            vision_feature_layer=layer,
            vision_feature_select_strategy=VISION_FEATURE_SELECT,
        )
        return torch.stack(list(out.pooler_output)), out.hidden_states[layer][:, 0]

    def answer(
        self,
        prompt: tuple[torch.Tensor, torch.Tensor],
        clip_pixels: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy answers for a batch sharing one prompt (text ids before and after the image slot):
        (generated ids (B, T), the final-norm hidden state that produced each generated token (B, T, D)).

        The states come from the generation pass itself: with the KV cache, step t's last position is
        the one whose logits chose token t, which is the position GLaMM reads for a [SEG] (its mask
        selects hidden states one before each [SEG] in its cache-free last step). A second forward over
        the whole sequence would give the same vectors at the cost of another prefill."""
        image_features, _ = self.encode_image(clip_pixels)
        embed = self.llava.get_input_embeddings()
        batch = image_features.shape[0]
        before, after = (embed(ids)[None].expand(batch, -1, -1) for ids in prompt)
        inputs_embeds = torch.cat([before, image_features.to(before.dtype), after], dim=1)
        out = self.llava.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
        states = torch.stack([step[-1][:, -1] for step in out.hidden_states], dim=1)
        return out.sequences, states

    def mask_logits(self, image_embeddings: torch.Tensor, seg_states: torch.Tensor) -> torch.Tensor:
        """SAM's low-resolution mask logits (n, 1, h, w) for one image's SAM embedding (1, C, H, W) and
        its n [SEG] states: text_hidden_fcs turns each into one sparse prompt, SAM's no-mask embedding is
        the dense prompt, and the single-mask output is kept, as GLaMM calls its mask decoder."""
        prompts = self.text_hidden_fcs[0](seg_states)
        sam = self.sam
        height, width = image_embeddings.shape[-2:]
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, height, width)
        masks, _ = sam.mask_decoder(
            image_embeddings=image_embeddings,
            image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=prompts[None, :, None, :],
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks[0]


# --- checkpoint key mapping (docs/legion_checkpoint.md) ------------------------------------------


class CheckpointMismatchError(WeightsFormatError):
    pass


IGNORED_UPSTREAM_KEYS: tuple[tuple[str, str], ...] = (
    (
        r"^model\.region_encoder\.",
        "GLaMM's region encoder embeds <bbox> prompts; LEGION's localisation passes none",
    ),
    (r"\.rotary_emb\.inv_freq$", "RoPE frequencies (saved by old transformers); recomputed from the config"),
    (
        r"^model\.vision_tower\.",
        (
            "CLIP tower: LEGION's merge script drops it and upstream inference reloads it "
            "from the vision tower weights, as coe does (`vision_tower`)"
        ),
    ),
    (
        r"^model\.grounding_encoder\.pixel_(mean|std)$",
        "SAM's normalisation constants, applied in preprocessing",
    ),
)
_UPSTREAM_PREFIXES = (
    ("model.embed_tokens.", "llava.model.language_model.embed_tokens."),
    ("model.layers.", "llava.model.language_model.layers."),
    ("model.norm.", "llava.model.language_model.norm."),
    ("lm_head.", "llava.lm_head."),
    ("model.mm_projector.0.", "llava.model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "llava.model.multi_modal_projector.linear_2."),
    ("model.text_hidden_fcs.", "text_hidden_fcs."),
)
_GROUNDING_ENCODER = "model.grounding_encoder."
_SAM_GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
# segment_anything -> transformers SamModel names, in order (the renames of transformers'
# models/sam/convert_sam_to_hf.py, written as anchored patterns).
_SAM_RENAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^image_encoder\.", "vision_encoder."),
        (r"\.blocks\.", ".layers."),
        (r"\.patch_embed\.proj\.", ".patch_embed.projection."),
        (r"\.neck\.0\.", ".neck.conv1."),
        (r"\.neck\.1\.", ".neck.layer_norm1."),
        (r"\.neck\.2\.", ".neck.conv2."),
        (r"\.neck\.3\.", ".neck.layer_norm2."),
        (r"\.norm(\d)\.", r".layer_norm\1."),
        (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
        (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
        (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
        (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
        (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
        (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
        (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
        (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
        (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
        (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
        # segment_anything's 3-layer MLPs (layers.0..2) are proj_in, layers.0, proj_out in transformers
        (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.0\.", r"\1.proj_in."),
        (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.1\.", r"\1.layers.0."),
        (r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.2\.", r"\1.proj_out."),
    )
)


def map_upstream_key(key: str) -> tuple[str, ...] | None:
    """The coe names of one key of the published LEGION checkpoint (GLaMM naming): () for a key
    deliberately ignored (IGNORED_UPSTREAM_KEYS), None for a key coe does not know."""
    if any(re.search(pattern, key) for pattern, _ in IGNORED_UPSTREAM_KEYS):
        return ()
    for prefix, target in _UPSTREAM_PREFIXES:
        if key.startswith(prefix):
            return (target + key[len(prefix) :],)
    if not key.startswith(_GROUNDING_ENCODER):
        return None
    name = key[len(_GROUNDING_ENCODER) :]
    if name == _SAM_GAUSSIAN:
        # one random-Fourier matrix that SamModel keeps twice: for prompts and for the image-wide encoding
        return (
            "sam.prompt_encoder.shared_embedding.positional_embedding",
            "sam.shared_image_embedding.positional_embedding",
        )
    for pattern, replacement in _SAM_RENAMES:
        name = pattern.sub(replacement, name)
    return (f"sam.{name}",)


def map_clip_key(key: str) -> tuple[str, ...] | None:
    """The coe names of one key of a transformers CLIP checkpoint (CLIPModel or CLIPVisionModel):
    the vision tower only; () for the text half and position ids (a buffer the model recomputes)."""
    if key.startswith("vision_model."):
        return (
            ()
            if key.endswith(".position_ids")
            else (f"llava.model.vision_tower.{key[len('vision_model.') :]}",)
        )
    if key.startswith(("text_model.", "text_projection.", "visual_projection.")) or key == "logit_scale":
        return ()
    return None


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers folder: sharded (an index json) or a single file."""
    for index in WEIGHT_INDEXES:
        if (folder / index).is_file():
            weight_map = json.loads((folder / index).read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise WeightsNotFoundError(f"{folder} holds none of {', '.join(WEIGHT_INDEXES + WEIGHT_FILES)}")


def read_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = handle.keys()
            for key in keys:
                yield key, handle.get_tensor(key)
    else:
        yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()


def mapped_state(
    sources: Sequence[tuple[Sequence[Path], Callable[[str], tuple[str, ...] | None]]],
    expected: set[str],
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Every tensor of `sources` (files, key mapping) under its coe name, on `device` in `dtype`;
    raises CheckpointMismatchError listing missing and unexpected keys, so nothing loads half-way."""
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for files, mapping in sources:
        for path in files:
            for key, tensor in read_tensors(path):
                names = mapping(key)
                if names is None or any(name not in expected for name in names):
                    unexpected.append(key if names is None else f"{key} (as {', '.join(names)})")
                    continue
                converted = tensor.to(
                    device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype
                )
                state.update(dict.fromkeys(names, converted))
    missing = sorted(expected - state.keys())
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"LEGION checkpoint does not match the model: {len(missing)} missing "
            f"({', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''})"
        )
    return state


def restore_derived_buffers(model: LegionModel, device: torch.device) -> None:
    """Buffers that checkpoints never hold (the model computes them at construction) and that a
    model built on the meta device therefore lacks: RoPE frequencies and CLIP's position ids."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    language_model = model.llava.model.language_model
    with torch.device(device):
        language_model.rotary_emb = LlamaRotaryEmbedding(language_model.config)
    embeddings = model.llava.model.vision_tower.embeddings
    embeddings.position_ids = torch.arange(embeddings.num_positions, device=device).expand((1, -1))
    still_meta = [
        name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta
    ]
    if still_meta:
        raise RuntimeError(f"LEGION tensors left unloaded: {', '.join(still_meta)}")


# --- answers: prompt, parsing, categories ----------------------------------------------------------


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids before and after the image slot, tokenised as GLaMM's `tokenizer_image_token` does:
    each side on its own, keeping the first side's BOS and dropping the second side's."""
    before_text, after_text = PROMPT.split(IMAGE_SLOT)
    before = tokenizer(before_text).input_ids
    after = tokenizer(after_text).input_ids
    if before and before[0] == tokenizer.bos_token_id and after and after[0] == tokenizer.bos_token_id:
        after = after[1:]
    return before, after


_TAG = re.compile(r"<[^<>]*>")
_CLOSING_PHRASE = re.compile(r"<p>((?:(?!<p>).)*)</p>\s*$", re.DOTALL)
_SENTENCE_END = re.compile(r"[.!?]")


def _tidy(text: str) -> str:
    text = " ".join(text.split())
    return re.sub(r"\s+([.,:;!?])", r"\1", text).strip("'").strip()


def parse_answer(chunks: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    """(the whole answer without tags, one (phrase, sentence around it) per [SEG]) from the decoded
    text between consecutive [SEG] tokens (len(chunks) = number of [SEG] + 1).

    A [SEG] closes the phrase marked `<p> ... </p>` just before it, and its sentence runs from the end
    of the previous sentence to the first full stop after the [SEG] (LEGION writes "phrase:explanation.").
    A [SEG] without a phrase stands for the sentence it ends, which then serves as the phrase too."""
    text = ""
    phrases: list[str] = []
    seg_offsets: list[int] = []
    for index, chunk in enumerate(chunks):
        if index < len(chunks) - 1:
            match = _CLOSING_PHRASE.search(chunk)
            phrases.append(_TAG.sub(" ", match.group(1)).strip() if match else "")
        text += _TAG.sub(" ", chunk)
        seg_offsets.append(len(text))
    # where each [SEG]'s text begins: its phrase, or the last character of the sentence it ends
    anchors = [
        text.rfind(phrase, 0, end) if phrase else len(text[:end].rstrip()) - 1
        for phrase, end in zip(phrases, seg_offsets, strict=False)
    ]
    artifacts = []
    for index, (phrase, end, anchor) in enumerate(zip(phrases, seg_offsets, anchors, strict=False)):
        previous_stops = [match.end() for match in _SENTENCE_END.finditer(text, 0, max(anchor, 0))]
        start = previous_stops[-1] if previous_stops else 0
        following = index + 1
        limit = (
            len(text)
            if following == len(phrases)
            else (anchors[following] if phrases[following] else seg_offsets[following])
        )
        full_stop = _SENTENCE_END.search(text, end if phrase else max(anchor, 0), limit)
        sentence = _tidy(text[start : full_stop.end() if full_stop else limit]).lstrip(":;,. ")
        artifacts.append((_tidy(phrase) or sentence, sentence))
    return _tidy(text), artifacts


# LEGION's answers do not name a category (SynthScars' training captions carry none), so coe reads it
# from the instruction's own vocabulary for each category.
_CATEGORY_CUES: dict[ArtifactCategory, re.Pattern] = {
    "physics": re.compile(
        r"\b(physic|optical|light|lighting|shadow|reflect|perspective|spatial|gravity|float)", re.IGNORECASE
    ),
    "structure": re.compile(
        r"\b(structur|deform|asymmetr|distorted text|malformed|missing|extra|fused|twisted|shape|spliced)",
        re.IGNORECASE,
    ),
    "distortion": re.compile(
        r"\b(distortion|colou?r|texture|blur|noise|noisy|artistic|style|material|smooth)", re.IGNORECASE
    ),
}


def artifact_category(text: str) -> ArtifactCategory:
    """The category whose cues occur most often in `text`; "other" when none does."""
    counts = {category: len(cue.findall(text)) for category, cue in _CATEGORY_CUES.items()}
    best = max(counts, key=counts.get)
    return best if counts[best] else "other"


# --- preprocessing ---------------------------------------------------------------------------------


def sam_input(image: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """SAM's input (3, size, size): longest side resized to `size` (segment_anything's
    ResizeLongestSide: bilinear, sides rounded half up), normalised, zero-padded right and bottom;
    and the resized (h, w), which mask post-processing crops back to."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = size / max(height, width)
    resized_hw = (int(height * scale + 0.5), int(width * scale + 0.5))
    resized = np.asarray(Image.fromarray(image).resize((resized_hw[1], resized_hw[0]), Image.BILINEAR))
    pixels = torch.from_numpy(resized.copy()).permute(2, 0, 1).float()
    pixels = (pixels - torch.tensor(SAM_PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(
        -1, 1, 1
    )
    padded = torch.nn.functional.pad(pixels, (0, size - resized_hw[1], 0, size - resized_hw[0]))
    return padded, resized_hw


def upsample_mask_logits(
    low_res: torch.Tensor, sam_size: int, resized_hw: tuple[int, int], original_hw: tuple[int, int]
) -> torch.Tensor:
    """segment_anything's postprocess_masks: logits (n, 1, h, w) up to the padded SAM input, cropped to
    the resized image, up to the original size (bilinear, in float32) -> (n, H, W)."""
    logits = torch.nn.functional.interpolate(
        low_res.float(), (sam_size, sam_size), mode="bilinear", align_corners=False
    )
    logits = logits[..., : resized_hw[0], : resized_hw[1]]
    return torch.nn.functional.interpolate(logits, original_hw, mode="bilinear", align_corners=False)[:, 0]


# --- the expert ------------------------------------------------------------------------------------


class LegionParams(TorchParams):
    batch_size: int = Field(default=4, ge=1, description="images run through the network together")
    max_new_tokens: int = Field(default=512, ge=1, description="upstream generates up to 512 tokens")
    vision_tower: str = Field(
        default=f"hf-hub:{CLIP_HUB}",
        description="the CLIP tower (transformers folder); the LEGION checkpoint does not include it",
    )
    sam: SamArchitecture = SamArchitecture()
    detection_head: str | None = Field(
        default=None,
        description="a file with LEGION's CLIP-CLS detection MLP (prediction_head.0/.2 weights); "
        "not published",
    )
    gate: Literal["verdict", "always"] = Field(
        default="verdict",
        description="verdict: predict() localises only images whose p_fake reaches the card's threshold "
        "(users' top complaint is artifacts found in real images); always: every image",
    )


def detection_head(vision_width: int) -> torch.nn.Sequential:
    """LEGION's detector (LegionForCls.prediction_head in model/Legion.py): CLS feature -> 2 logits,
    index 0 = fake, 1 = real (scripts/cls/eval.py labels real images 1)."""
    return torch.nn.Sequential(
        torch.nn.Linear(vision_width, 2 * vision_width), torch.nn.ReLU(), torch.nn.Linear(2 * vision_width, 2)
    )


@dataclass
class _Loaded:
    model: LegionModel
    tokenizer: object
    clip_processor: object
    prompt: tuple[torch.Tensor, torch.Tensor]
    seg_token_id: int
    eos_token_id: int
    pad_token_id: int
    device: torch.device
    dtype: torch.dtype
    head: torch.nn.Sequential | None


@register_expert("legion")
class LegionExpert(PretrainedExpert, Localizer):
    """Localises and explains artifacts (one mask per phrase); detects only with a detection head."""

    Params = LegionParams
    default_weights: ClassVar[str] = f"hf-hub:{LEGION_HUB}"
    published_at: ClassVar[str] = f"https://huggingface.co/{LEGION_HUB}"

    def __init__(self, card: ExpertCard):
        super().__init__(card)
        self._loaded: _Loaded | None = None

    # loading ------------------------------------------------------------------------------------

    def load(self, weights: str | Path) -> LegionExpert:
        ensure_torchvision_importable()
        from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessorPil

        params: LegionParams = self.params
        legion_folder = self._locate(
            weights,
            LEGION_HUB,
            "weights",
            "LEGION's localisation and explanation checkpoint (16.75 GB)",
            required=("config.json", "tokenizer_config.json"),
            patterns=None,
        )
        clip_folder = self._locate(
            params.vision_tower,
            CLIP_HUB,
            "params.vision_tower",
            "the CLIP tower LEGION runs, which its checkpoint does not include",
            required=("config.json",),
            patterns=("*.json", "*.safetensors", "*.bin"),  # not the TF and Flax copies of the same weights
        )
        clip_config = AutoConfig.from_pretrained(clip_folder, local_files_only=True)
        vision_config = getattr(clip_config, "vision_config", clip_config)
        upstream_config = json.loads((legion_folder / "config.json").read_text())
        architecture = LegionArchitecture(
            text=TextArchitecture.from_upstream_config(upstream_config),
            vision=VisionArchitecture(
                **{name: getattr(vision_config, name) for name in VisionArchitecture.model_fields}
            ),
            sam=params.sam,
            vision_feature_layer=upstream_config.get("mm_vision_select_layer", -2),
        )
        device = resolve_device(params.device)
        dtype = resolve_dtype(params.dtype, device)
        with torch.device("meta"):
            model = LegionModel(architecture)
        state = mapped_state(
            [(weight_files(legion_folder), map_upstream_key), (weight_files(clip_folder), map_clip_key)],
            set(model.state_dict()),
            device,
            dtype,
        )
        model.load_state_dict(state, strict=True, assign=True)
        restore_derived_buffers(model, device)
        model.eval()

        try:
            tokenizer = AutoTokenizer.from_pretrained(legion_folder, local_files_only=True)
        except Exception as error:
            raise RuntimeError(
                f"cannot load LEGION's tokenizer from {legion_folder} ({type(error).__name__}: {error}); "
                "its slow LLaMA tokenizer (tokenizer.model) needs `pip install sentencepiece`"
            ) from error
        seg_token_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        if seg_token_id is None or seg_token_id == tokenizer.unk_token_id:
            raise WeightsFormatError(f"LEGION's tokenizer in {legion_folder} has no {SEG_TOKEN} token")
        before, after = prompt_token_ids(tokenizer)
        size = architecture.vision.image_size
        head, head_digest = self._load_head(architecture.vision.hidden_size, device, dtype)

        self._loaded = _Loaded(
            model=model,
            tokenizer=tokenizer,
            # CLIPImageProcessor of openai/clip-vit-large-patch14-336 (GLaMM's preprocessing): PIL bicubic
            # resize of the short side, centre crop, OpenAI CLIP mean/std
            clip_processor=CLIPImageProcessorPil(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            ),
            prompt=(torch.tensor(before, device=device), torch.tensor(after, device=device)),
            seg_token_id=seg_token_id,
            eos_token_id=tokenizer.eos_token_id,
            # upstream pads with <unk>; the pad id only fills rows that finished early
            pad_token_id=tokenizer.unk_token_id
            if tokenizer.unk_token_id is not None
            else tokenizer.eos_token_id,
            device=device,
            dtype=dtype,
            head=head,
        )
        parts = [weights_digest(legion_folder), weights_digest(clip_folder), head_digest]
        self.weights_digest = hashlib.sha256("\0".join(p for p in parts if p).encode()).hexdigest()
        return self

    def _locate(
        self,
        reference: str | Path,
        repo: str,
        setting: str,
        what: str,
        required: tuple[str, ...],
        patterns: tuple[str, ...] | None,
    ) -> Path:
        try:
            return locate_weights(reference, self.name, required=required, patterns=patterns)
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(
                f"{error}. It needs {what}, published as {repo}: download it where a network exists "
                f"(`hf download {repo} --local-dir DIR`) and set the card's `{setting}:` to DIR"
            ) from error

    def _load_head(
        self, vision_width: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.nn.Sequential | None, str | None]:
        if self.params.detection_head is None:
            return None, None
        path = locate_weights(self.params.detection_head, self.name)
        state = dict(read_tensors(path))
        # LegionForCls saves the head as prediction_head.*; a bare Sequential state dict works too
        state = {key.removeprefix("prediction_head."): tensor for key, tensor in state.items()}
        head = detection_head(vision_width)
        head.load_state_dict(state, strict=True)
        return head.to(device=device, dtype=dtype).eval(), weights_digest(path)

    # inference ----------------------------------------------------------------------------------

    @property
    def loaded(self) -> _Loaded:
        if self._loaded is None:
            raise RuntimeError(f"expert {self.name!r}: call load() before using it")
        return self._loaded

    def _clip_pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        loaded = self.loaded
        pixels = loaded.clip_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return pixels.to(device=loaded.device, dtype=loaded.dtype)

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        loaded = self.loaded
        if loaded.head is None:
            raise RuntimeError(
                f"expert {self.name!r}: LEGION's detection head (an MLP on CLIP's CLS feature) was not "
                "published, so this expert has no p_fake; set params.detection_head to a file with its "
                "weights, or use LEGION to localise images other experts judged fake (coe's `localize:` "
                "setting)"
            )
        probabilities = []
        with torch.inference_mode():
            for start in range(0, len(images), self.params.batch_size):
                _, cls_features = loaded.model.encode_image(
                    self._clip_pixels(images[start : start + self.params.batch_size])
                )
                logits = loaded.head(cls_features).float()
                probabilities.append(torch.softmax(logits, dim=-1)[:, 0].cpu().numpy())
        return np.concatenate(probabilities) if probabilities else np.zeros(0)

    def localize(self, images: Sequence[np.ndarray]) -> list[Localization]:
        results: list[Localization] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.params.batch_size):
                batch = images[start : start + self.params.batch_size]
                began = time.perf_counter()
                localizations = self._localize_batch(batch)
                per_image_ms = 1000.0 * (time.perf_counter() - began) / len(batch)
                for localization in localizations:
                    localization.latency_ms = per_image_ms
                results.extend(localizations)
        return results

    def _localize_batch(self, images: Sequence[np.ndarray]) -> list[Localization]:
        loaded = self.loaded
        model = loaded.model
        sam_size = self.params.sam.image_size
        generated, states = model.answer(
            loaded.prompt,
            self._clip_pixels(images),
            self.params.max_new_tokens,
            loaded.eos_token_id,
            loaded.pad_token_id,
        )
        sam_inputs = [sam_input(image, sam_size) for image in images]
        sam_pixels = torch.stack([pixels for pixels, _ in sam_inputs]).to(
            device=loaded.device, dtype=loaded.dtype
        )
        image_embeddings = model.sam.get_image_embeddings(sam_pixels)
        localizations = []
        for index, image in enumerate(images):
            ids = generated[index].tolist()
            if loaded.eos_token_id in ids:
                ids = ids[: ids.index(loaded.eos_token_id)]
            seg_positions = [position for position, token in enumerate(ids) if token == loaded.seg_token_id]
            chunks, begin = [], 0
            for position in [*seg_positions, len(ids)]:
                chunks.append(loaded.tokenizer.decode(ids[begin:position], skip_special_tokens=False))
                begin = position + 1
            explanation, parsed = parse_answer(chunks)
            masks = np.zeros((0, *image.shape[:2]), dtype=bool)
            if seg_positions:
                low_res = model.mask_logits(image_embeddings[index : index + 1], states[index, seg_positions])
                logits = upsample_mask_logits(low_res, sam_size, sam_inputs[index][1], image.shape[:2])
                masks = (logits > 0).cpu().numpy()
            artifacts = [
                Artifact(
                    category=artifact_category(f"{phrase} {sentence}"), phrase=phrase, explanation=sentence
                ).with_mask(mask)
                for (phrase, sentence), mask in zip(parsed, masks, strict=True)
            ]
            localizations.append(
                Localization(expert=self.name, explanation=explanation, artifacts=artifacts).with_union_mask(
                    np.logical_or.reduce(masks, axis=0)
                )  # all False where nothing was found
            )
        return localizations

    def predict(self, images: Sequence[np.ndarray]) -> list[ExpertOutput]:
        """p_fake from the detection head; localisation for every image (`gate: always`) or for those
        judged fake (`gate: verdict`)."""
        began = time.perf_counter()
        probabilities = self.predict_proba(images)
        threshold = self.card.threshold
        chosen = [i for i, p in enumerate(probabilities) if self.params.gate == "always" or p >= threshold]
        found = dict(zip(chosen, self.localize([images[i] for i in chosen]), strict=True))
        localizations = [found.get(index, Localization(expert=self.name)) for index in range(len(images))]
        outputs = self.outputs(
            probabilities, began,
            explanation=[localization.explanation for localization in localizations],
            artifacts=[localization.artifacts for localization in localizations],
        )
        for output, localization in zip(outputs, localizations, strict=True):
            if localization.union_mask is not None:
                output.with_union_mask(localization.union_mask)
        return outputs

    # size ---------------------------------------------------------------------------------------

    @classmethod
    def full_size_footprint(cls, params: LegionParams) -> Footprint:
        """Vicuna-7B + CLIP ViT-L/14-336 + SAM ViT-H at 1024 + text_hidden_fcs in bfloat16: one image's
        CLIP pass, the prefill over the prompt with its 576 image tokens, SAM's image encoder and one
        mask decode; max_new_tokens generated tokens."""
        architecture = LegionArchitecture(sam=params.sam)
        # the Vicuna tokenizer is not available offline: words and punctuation marks approximate its count
        prompt_tokens = len(re.findall(r"\w+|[^\w\s]", PROMPT.replace(IMAGE_SLOT, ""))) + 1
        sequence = prompt_tokens + architecture.vision.num_image_tokens
        vision, sam, text = architecture.vision, architecture.sam, architecture.text

        def forward(model: LegionModel) -> None:
            meta = torch.device("meta")
            model.encode_image(torch.zeros(1, 3, vision.image_size, vision.image_size, device=meta))
            hidden = model.llava.model.language_model(
                inputs_embeds=torch.zeros(1, sequence, text.hidden_size, device=meta)
            )
            last = hidden.last_hidden_state[:, -1:]
            model.llava.lm_head(last)
            image_embeddings = model.sam.get_image_embeddings(
                torch.zeros(1, 3, sam.image_size, sam.image_size, device=meta)
            )
            model.mask_logits(image_embeddings, last[0])

        parameters, gflops = count_parameters_and_flops(lambda: LegionModel(architecture), forward)
        return Footprint(
            parameters=parameters,
            forward_gflops=gflops,
            generated_tokens=params.max_new_tokens,
            dtype="bfloat16",
        )

"""FakeVLM expert (Wen et al. 2025, "Spot the Fake: Large Multimodal Model-Based Synthetic Image
Detection with Artifact Explanation"): LLaVA-1.5-7B fine-tuned on FakeClue to answer "Does the
image looks real/fake?" with "This is a fake image." or "This is a real image." followed by an
explanation of the artifacts it sees.

Upstream reads its verdict by searching the generated text for "real"/"fake" (a coin flip when
neither appears), which gives a hard label and no ranking. Here p_fake comes from the model's
next-token distribution after the teacher-forced answer prefix "This is a": the probability of
"fake" renormalised against "real". Generation is only needed for the explanation."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from coe.core.records import ExpertOutput
from experts.base import PretrainedExpert, TorchParams, register_expert
from experts.sizing import Footprint, count_parameters_and_flops
from experts.weights import (
    WeightsFormatError,
    WeightsNotFoundError,
    locate_weights,
    resolve_device,
    resolve_dtype,
    weights_digest,
)

IMAGE_TOKEN = "<image>"
# Verbatim (grammar included) from the FakeClue records and the upstream evaluation script.
UPSTREAM_PROMPT = "<image>Does the image looks real/fake?"
ANSWER_PREFIX = "This is a"
VERDICT_WORDS = ("fake", "real")
PUBLISHED_WEIGHTS = "hf-hub:lingcco/fakeVLM"
PUBLISHED_PROCESSOR = "hf-hub:llava-hf/llava-1.5-7b-hf"
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")
PROCESSOR_FILE_PATTERNS = ("*.json", "tokenizer.model", "*.jinja")  # not the 14 GB of weights beside them
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)

# LLaVA-1.5-7B as published (llava-hf/llava-1.5-7b-hf config): CLIP ViT-L/14 at 336 px, whose
# second-to-last layer's 576 patch features go through a 2-layer GELU MLP into Vicuna-7B.
CLIP_VIT_L14_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)
VICUNA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
)
IMAGE_TOKENS = (336 // 14) ** 2
# BOS + the question (~10 sentencepiece tokens) + "This is a" (3), rounded up: the text is a small
# fraction of the 576 image tokens, so the approximation barely moves the FLOPs.
PROMPT_TEXT_TOKENS = 16


class FakeVLMParams(TorchParams):
    batch_size: int = Field(default=8, ge=1, description="images run through the network together")
    prompt: str = Field(
        default=UPSTREAM_PROMPT, description=f"the question, with one {IMAGE_TOKEN} where the image goes"
    )
    prompt_style: Literal["raw", "chat"] = Field(
        default="raw",
        description="raw: the prompt as is, as upstream evaluates; chat: LLaVA-1.5's "
        "'USER: <image>\\n... ASSISTANT:' template, the form FakeVLM was fine-tuned in",
    )
    max_new_tokens: int = Field(
        default=256, ge=1, description="explanation length cap; upstream evaluates with 256"
    )
    explain: bool = Field(
        default=True, description="generate the explanation; off, predict costs one forward pass"
    )
    processor: str = Field(
        default=PUBLISHED_PROCESSOR,
        description="where the tokenizer and image processor come from when the weights folder has none "
        "of its own",
    )

    @field_validator("prompt")
    @classmethod
    def _one_image_token(cls, prompt: str) -> str:
        if prompt.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"the prompt must contain {IMAGE_TOKEN} exactly once: {prompt!r}")
        return prompt


def build_prompt(prompt: str, style: Literal["raw", "chat"]) -> str:
    """The text given to the processor. The chat form is what llava-hf's chat template renders for one
    user turn with the image first, which is how lmms-finetune fed FakeClue during training."""
    if style == "raw":
        return prompt
    question = prompt.replace(IMAGE_TOKEN, "").strip()
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def verdict_token_ids(tokenizer) -> dict[str, int]:
    """The first token of each verdict word as it continues "This is a", e.g. sentencepiece's
    "▁fake" rather than a bare "fake"; found by tokenising the prefix with and without the word."""
    prefix = tokenizer(ANSWER_PREFIX, add_special_tokens=False).input_ids
    token_ids: dict[str, int] = {}
    for word in VERDICT_WORDS:
        continued = tokenizer(f"{ANSWER_PREFIX} {word}", add_special_tokens=False).input_ids
        if continued[: len(prefix)] != prefix or len(continued) == len(prefix):
            raise WeightsFormatError(
                f"FakeVLM: the tokenizer does not continue {ANSWER_PREFIX!r} with {word!r} as its own token"
            )
        token_id = continued[len(prefix)]
        if token_id == tokenizer.unk_token_id:
            raise WeightsFormatError(
                f"FakeVLM: the tokenizer cannot encode the verdict word {word!r} (it becomes the unknown "
                "token); use LLaVA-1.5's tokenizer (llava-hf/llava-1.5-7b-hf)"
            )
        token_ids[word] = token_id
    if token_ids["fake"] == token_ids["real"]:
        raise WeightsFormatError(
            "FakeVLM: the tokenizer gives 'fake' and 'real' the same first token; they cannot be told apart"
        )
    return token_ids


def _has_processor_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in PROCESSOR_CONFIGS) and any(
        (folder / name).is_file() for name in TOKENIZER_FILES
    )


@register_expert("fakevlm")
class FakeVLMExpert(PretrainedExpert):
    Params = FakeVLMParams
    params: FakeVLMParams
    default_weights: ClassVar[str] = PUBLISHED_WEIGHTS
    published_at: ClassVar[str] = "https://huggingface.co/lingcco/fakeVLM"

    def load(self, weights: str | Path) -> FakeVLMExpert:
        from coe.core.torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        folder = self._locate_checkpoint(weights)
        processor_folder = folder if _has_processor_files(folder) else self._locate_processor()
        self.device = resolve_device(self.params.device)
        self.dtype = resolve_dtype(self.params.dtype, self.device)
        model, loading = LlavaForConditionalGeneration.from_pretrained(
            folder, dtype=self.dtype, local_files_only=True, output_loading_info=True
        )
        problems = {kind: sorted(map(str, keys)) for kind, keys in loading.items() if keys}
        if problems:
            raise RuntimeError(
                f"expert {self.name!r}: {folder} does not match LLaVA-1.5's architecture: {problems}"
            )
        self.model = model.to(self.device).eval()
        processor = AutoProcessor.from_pretrained(processor_folder, local_files_only=True)
        _complete_old_processor(processor, self.model.config)
        # Rows share one prompt and one image-token count, so they come out the same length today; left
        # padding keeps it right should they ever differ: the verdict is read in the last column and
        # generation continues from there.
        processor.tokenizer.padding_side = "left"
        self.processor = processor
        self.verdict_ids = verdict_token_ids(processor.tokenizer)
        self.weights_digest = weights_digest(folder)
        return self

    def _locate_checkpoint(self, weights: str | Path) -> Path:
        how = (
            f"FakeVLM's published checkpoint is {PUBLISHED_WEIGHTS} "
            "(https://huggingface.co/lingcco/fakeVLM, ~14 GB): `hf download lingcco/fakeVLM --local-dir DIR` "
            "where a network exists, then set the card's `weights:` to DIR"
        )
        try:
            folder = locate_weights(weights, self.name, required=("config.json",))
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(f"{error}; {how}") from error
        if not folder.is_dir() or not any((folder / name).is_file() for name in WEIGHT_FILES):
            raise WeightsNotFoundError(
                f"expert {self.name!r}: {folder} holds no LLaVA weights ({', '.join(WEIGHT_FILES)}); {how}"
            )
        return folder

    def _locate_processor(self) -> Path:
        try:
            folder = locate_weights(self.params.processor, self.name, patterns=PROCESSOR_FILE_PATTERNS)
        except WeightsNotFoundError as error:
            raise WeightsNotFoundError(
                f"{error}; the FakeVLM weights folder has no tokenizer and image processor of its own, so "
                f"they come from params.processor ({self.params.processor}): put LLaVA-1.5's processor files "
                "there (`hf download llava-hf/llava-1.5-7b-hf --include '*.json' tokenizer.model --local-dir "
                "DIR`, then params.processor: DIR) or copy them into the weights folder"
            ) from error
        if not _has_processor_files(folder):
            raise WeightsNotFoundError(
                f"expert {self.name!r}: {folder} lacks a tokenizer ({' or '.join(TOKENIZER_FILES)}) "
                f"or an image processor config ({' or '.join(PROCESSOR_CONFIGS)})"
            )
        return folder

    def _require_loaded(self) -> None:
        if self.weights_digest is None:
            raise RuntimeError(f"expert {self.name!r}: call load() before predicting")

    def _batches(self, images: Sequence[np.ndarray]):
        from PIL import Image

        size = self.params.batch_size
        for start in range(0, len(images), size):
            yield [Image.fromarray(np.ascontiguousarray(image)) for image in images[start : start + size]]

    def _encode(self, texts: list[str], images: list) -> dict[str, torch.Tensor]:
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return inputs

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self._require_loaded()
        scored = f"{build_prompt(self.params.prompt, self.params.prompt_style)} {ANSWER_PREFIX}"
        fake, real = self.verdict_ids["fake"], self.verdict_ids["real"]
        probabilities = []
        with torch.inference_mode():
            for batch in self._batches(images):
                inputs = self._encode([scored] * len(batch), batch)
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, [fake, real]].float()
                probabilities.append(torch.softmax(logits, dim=-1)[:, 0].cpu().numpy())
        return np.concatenate(probabilities) if probabilities else np.zeros(0)

    def explain(self, images: Sequence[np.ndarray]) -> list[str | None]:
        """The greedy answer to the prompt ("This is a fake image. ..."), without the prompt; None when
        the model answers nothing."""
        self._require_loaded()
        prompt = build_prompt(self.params.prompt, self.params.prompt_style)
        tokenizer = self.processor.tokenizer
        answers: list[str | None] = []
        with torch.inference_mode():
            for batch in self._batches(images):
                inputs = self._encode([prompt] * len(batch), batch)
                generated = self.model.generate(
                    **inputs, max_new_tokens=self.params.max_new_tokens, do_sample=False, num_beams=1,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = generated[:, inputs["input_ids"].shape[1] :]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                answers.extend(text.strip() or None for text in texts)
        return answers

    def predict(self, images: Sequence[np.ndarray]) -> list[ExpertOutput]:
        started = time.perf_counter()
        probabilities = self.predict_proba(images)
        explanations = self.explain(images) if self.params.explain else [None] * len(images)
        return self.outputs(probabilities, started, explanation=explanations)

    @classmethod
    def full_size_footprint(cls, params: FakeVLMParams) -> Footprint:
        """LLaVA-1.5-7B on one 336x336 image and the prompt, the verdict read at the last position."""
        from coe.core.torchvision_compat import ensure_torchvision_importable

        ensure_torchvision_importable()
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

        config = LlavaConfig(
            vision_config=CLIPVisionConfig(**CLIP_VIT_L14_336),
            text_config=LlamaConfig(**VICUNA_7B),
            image_token_index=32000,
            projector_hidden_act="gelu",
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        prompt_tokens = IMAGE_TOKENS + PROMPT_TEXT_TOKENS

        def forward(model) -> None:
            # The whole model's forward calls .item() while merging image features, which the meta
            # device cannot answer; the three parts it runs are counted one by one instead.
            meta = torch.device("meta")
            model.model.get_image_features(pixel_values=torch.empty(1, 3, 336, 336, device=meta))
            hidden = model.model.language_model(
                inputs_embeds=torch.empty(1, prompt_tokens, VICUNA_7B["hidden_size"], device=meta)
            ).last_hidden_state
            model.lm_head(hidden[:, -1:])

        parameters, gflops = count_parameters_and_flops(
            lambda: LlavaForConditionalGeneration(config), forward
        )
        return Footprint(
            parameters=parameters, forward_gflops=gflops, generated_tokens=params.max_new_tokens,
            dtype="bfloat16",
        )


def _complete_old_processor(processor, model_config) -> None:
    """Older LLaVA processor configs lack the fields that size the image token run; without them the
    prompt holds one <image> token instead of one per patch. They follow from the model's config."""
    if getattr(processor, "patch_size", None) is not None:
        return
    processor.patch_size = model_config.vision_config.patch_size
    processor.vision_feature_select_strategy = model_config.vision_feature_select_strategy
    processor.num_additional_image_tokens = 1  # CLIP's class token, which "default" then drops

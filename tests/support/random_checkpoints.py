"""Random-weight checkpoints written in each seed expert's upstream on-disk layout, tiny or full size:
what the tests load through the user's code path, and what the GPU smoke benchmark runs when the
published weights are not at hand.

    checkpoint = write_random_checkpoint("legion", folder, "tiny")
    create_expert(card with checkpoint.params).load(checkpoint.weights)

`weights` is what a user passes to `expert.load`; `params` is what the card must say besides (where
the CLIP tower is, SAM's sizes, ...). "full" is the published architecture with random weights:
FakeVLM LLaVA-1.5-7B (CLIP ViT-L/14-336, 576 image tokens); LEGION Vicuna-7B + CLIP ViT-L/14-336 +
SAM ViT-H + text_hidden_fcs; UnivFD open_clip ViT-L-14 (QuickGELU, as the openai tag) +
Linear(768, 1); NPR its one network, the same at both sizes. The 7B models are made in bfloat16
(~15 GB on disk, sharded safetensors), on the GPU where there is one: seconds, against minutes of
random numbers on the CPU. Tokenizers are tiny word-level ones at both sizes (the published
vocabularies are not at hand); a full-size model's vocabulary is larger than its tokenizer's.

LEGION's upstream key names are written out here from upstream's code, independently of
experts/legion.py's loading map, so that loading a checkpoint back tests that map."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from huggingface_hub import save_torch_state_dict
from pydantic import BaseModel, ConfigDict, Field

from coe.core.torchvision_compat import ensure_torchvision_importable

Size = Literal["tiny", "full"]

# Full-size 7B checkpoints come in shards of this size, as the hub's LLaVA repositories do.
FULL_SHARD_BYTES = 5 * 10**9
# Tiny LEGION checkpoints are sharded too, so that loading goes through the shard index.
TINY_SHARD_BYTES = 64 * 1024
# What a full-size checkpoint is written in: the 7B models in bfloat16, which halves memory and disk.
FULL_SIZE_DTYPES = {
    "fakevlm": torch.bfloat16,
    "legion": torch.bfloat16,
    "npr": torch.float32,
    "univfd": torch.float32,
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class RandomCheckpoint(BaseModel):
    """A checkpoint with random weights: what `expert.load` takes, and the card params it needs."""

    model_config = ConfigDict(extra="forbid")
    weights: Path
    params: dict[str, Any] = {}
    parameters: int = Field(description="parameters of the model the expert runs from this checkpoint")


def tiny_word_tokenizer(words: Iterable[str], special_tokens: Iterable[str] = ()):
    """A fast tokenizer over whitespace-separated `words`, plus `special_tokens` that split out of
    running text (`<image>Does` -> `<image>`, `Does`); ids follow the order given, `<unk>` first.
    transformers saves and reloads it as any fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = list(dict.fromkeys(["<unk>", "<s>", "</s>", "<pad>", *words]))
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


@contextmanager
def _constructing(size: Size, family: str) -> Iterator[torch.device]:
    """Where a 7B family's random weights are made: a full-size model in FULL_SIZE_DTYPES, on the GPU
    where there is one; a tiny one in float32 on the CPU, so that a seed gives the same weights
    everywhere."""
    if size == "tiny":
        yield torch.device("cpu")
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(FULL_SIZE_DTYPES[family])
    try:
        with device:
            yield device
    finally:
        torch.set_default_dtype(previous)


def _count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# --- FakeVLM: lingcco/fakeVLM, a LLaVA-1.5 folder in the Hugging Face layout ------------------------

FAKEVLM_WORDS = [
    *"USER: ASSISTANT: Does the image looks real/fake? This is a fake real image .".split(),
    *"hand sky text blurry".split(),
]
TINY_LLAVA_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    image_size=28, patch_size=14, projection_dim=32,
)
TINY_LLAVA_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, max_position_embeddings=1024,
)


def write_fakevlm(
    folder: Path,
    size: Size,
    seed: int = 0,
    *,
    words: Iterable[str] = FAKEVLM_WORDS,
    old_processor: bool = False,
) -> RandomCheckpoint:
    """LlavaForConditionalGeneration (CLIP vision tower, LLaMA) with its processor and tokenizer, saved
    with save_pretrained as in the hub repository. `old_processor`: a processor config from before
    transformers sized the image-token run (no patch_size); the weights stay those of `seed`."""
    ensure_torchvision_importable()
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from experts.fakevlm import CLIP_VIT_L14_336, VICUNA_7B

    tokenizer = tiny_word_tokenizer(words, ["<image>"])
    vision = CLIP_VIT_L14_336 if size == "full" else TINY_LLAVA_VISION
    text = VICUNA_7B if size == "full" else {**TINY_LLAVA_TEXT, "vocab_size": len(tokenizer)}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision),
        text_config=LlamaConfig(
            **text, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    with _constructing(size, "fakevlm"):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder, max_shard_size=FULL_SHARD_BYTES)
    side = vision["image_size"]
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=tokenizer,
        patch_size=None if old_processor else vision["patch_size"],
        vision_feature_select_strategy=None if old_processor else "default",
        # CLIP's class token, which "default" drops: the <image> run matches the patch features
        num_additional_image_tokens=0 if old_processor else 1,
    )
    processor.save_pretrained(folder)
    return RandomCheckpoint(weights=folder, parameters=_count(model))


# --- UnivFD: UniversalFakeDetect's fc_weights.pth and an open_clip CLIP folder ------------------------

TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD},
}
UNIVFD_PROBE_FILE = "fc_weights.pth"


def open_clip_config(size: Size) -> dict:
    """open_clip_config.json of a `local-dir:` folder: a tiny CLIP, or ViT-L-14 with OpenAI's QuickGELU."""
    if size == "tiny":
        return TINY_CLIP_CONFIG
    ensure_torchvision_importable()
    import open_clip

    return {
        "model_cfg": {**open_clip.get_model_config("ViT-L-14"), "quick_gelu": True},
        "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD},
    }


def write_open_clip(folder: Path, size: Size, seed: int = 0) -> Path:
    """An open_clip CLIP (image and text towers) with random weights, saved as a `local-dir:` folder:
    open_clip_config.json and open_clip_pytorch_model.bin."""
    ensure_torchvision_importable()
    import open_clip

    config = open_clip_config(size)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**config["model_cfg"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def write_univfd(folder: Path, size: Size, seed: int = 0) -> RandomCheckpoint:
    """The probe as upstream's training saves it (torch.save of Linear(embed_dim, 1)'s state dict)
    beside the CLIP folder it reads; the probe's seed is `seed` + 1, so two checkpoints of different
    seeds differ in both."""
    ensure_torchvision_importable()
    import open_clip

    clip_folder = write_open_clip(folder / "clip", size, seed)
    model_config = open_clip_config(size)["model_cfg"]
    torch.manual_seed(seed + 1)
    probe = torch.nn.Linear(model_config["embed_dim"], 1)
    torch.save(probe.state_dict(), folder / UNIVFD_PROBE_FILE)
    with torch.device("meta"):
        visual = open_clip.model.CLIP(**model_config).visual
    return RandomCheckpoint(
        weights=folder / UNIVFD_PROBE_FILE,
        params={"clip_weights": f"local-dir:{clip_folder}"},
        parameters=_count(visual) + _count(probe),
    )


# --- NPR: NPR-DeepfakeDetection's NPR.pth -------------------------------------------------------------


def write_npr(folder: Path, size: Size, seed: int = 0) -> RandomCheckpoint:
    """NPR.pth as published: the state dict of a DataParallel model ("module." keys) under "model",
    beside the optimiser's state and the step count. The network has one size; BatchNorm statistics
    are set far from their defaults so that evaluation-mode BatchNorm matters."""
    from experts.npr import NPRNetwork

    torch.manual_seed(seed)
    network = NPRNetwork()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": {f"module.{key}": value for key, value in network.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0002, "params": [0, 1]}]},
            "total_steps": 1234,
        },
        folder / "NPR.pth",
    )
    return RandomCheckpoint(weights=folder / "NPR.pth", parameters=_count(network))


# --- LEGION: khr0516/legion_LE (GLaMM naming) and the CLIP tower's own transformers folder -----------

GLAMM_TOKENS = ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]
LEGION_WORDS = [
    *"USER: ASSISTANT: provides an overview of picture.".split(),
    *"Upon examining the image , I found : hand ear shadow sky text is blurry deformed too smooth .".split(),
]
TINY_LEGION_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
}
TINY_LEGION_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
    "layer_norm_eps": 1e-5,
    "hidden_act": "quick_gelu",
}
TINY_SAM = {
    "image_size": 64,
    "patch_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": [1],
    "window_size": 2,
    "prompt_dim": 16,
    "mask_input_channels": 4,
    "decoder_mlp_dim": 32,
    "decoder_layers": 2,
    "decoder_heads": 2,
}
# Random SAM weights barely listen to a weak prompt: a loud one gives each [SEG] its own mask.
PROMPT_GAIN = 30.0
# A tiny random detection head answers ~0.5 for every image; a loud one spreads p_fake out. The full
# one, on 1024 CLS features, is left as initialised: made as loud, it answered 1.0 for every image.
DETECTION_GAIN = {"tiny": 40.0, "full": 1.0}
CLIP_336_FOLDER = "clip-vit-large-patch14-336"
TINY_CLIP_TEXT_HALF = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "vocab_size": 64,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# transformers SamModel fragment -> segment_anything fragment, from segment_anything's module names.
SAM_NAMES = [
    ("vision_encoder.", "image_encoder."),
    ("patch_embed.projection.", "patch_embed.proj."),
    ("neck.conv1.", "neck.0."),
    ("neck.layer_norm1.", "neck.1."),
    ("neck.conv2.", "neck.2."),
    ("neck.layer_norm2.", "neck.3."),
    ("layer_norm_final_attn.", "norm_final_attn."),
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("layer_norm3.", "norm3."),
    ("layer_norm4.", "norm4."),
    ("prompt_encoder.point_embed.", "prompt_encoder.point_embeddings."),
    ("mask_embed.conv1.", "mask_downscaling.0."),
    ("mask_embed.layer_norm1.", "mask_downscaling.1."),
    ("mask_embed.conv2.", "mask_downscaling.3."),
    ("mask_embed.layer_norm2.", "mask_downscaling.4."),
    ("mask_embed.conv3.", "mask_downscaling.6."),
    ("upscale_conv1.", "output_upscaling.0."),
    ("upscale_layer_norm.", "output_upscaling.1."),
    ("upscale_conv2.", "output_upscaling.3."),
    (".layers.0.", ".layers.1."),
    (".proj_in.", ".layers.0."),
    (".proj_out.", ".layers.2."),
]
_SAM_MLP_ONLY = (".layers.0.", ".proj_in.", ".proj_out.")


def upstream_legion_name(name: str) -> str | None:
    """The published checkpoint's key (GLaMM naming) for one of experts.legion.LegionModel's names;
    None for what the checkpoint does not hold (the CLIP tower, the second copy of SAM's matrix)."""
    if name.startswith("llava.model.language_model."):
        return "model." + name.removeprefix("llava.model.language_model.")
    if name == "llava.lm_head.weight":
        return "lm_head.weight"
    if name.startswith("llava.model.multi_modal_projector."):
        tail = name.removeprefix("llava.model.multi_modal_projector.")
        return "model.mm_projector." + tail.replace("linear_1.", "0.").replace("linear_2.", "2.")
    if name.startswith("text_hidden_fcs."):
        return "model." + name
    if name == "sam.prompt_encoder.shared_embedding.positional_embedding":
        return "model.grounding_encoder.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    if name.startswith(("sam.vision_encoder.", "sam.prompt_encoder.", "sam.mask_decoder.")):
        tail = name.removeprefix("sam.")
        mlp = "output_hypernetworks_mlps" in tail or "iou_prediction_head" in tail
        for hf, sam in SAM_NAMES:
            if hf in _SAM_MLP_ONLY and not mlp:
                continue
            tail = tail.replace(hf, sam, 1)
        if tail.startswith("image_encoder."):
            tail = tail.replace(".layers.", ".blocks.", 1)
        return "model.grounding_encoder." + tail
    return None


def legion_tokenizer(words: Iterable[str] = LEGION_WORDS):
    return tiny_word_tokenizer(words, GLAMM_TOKENS)


def legion_architecture(size: Size, words: Iterable[str] = LEGION_WORDS):
    """The published architecture (Vicuna-7B with GLaMM's 32007 tokens), or a tiny one whose
    vocabulary is the tiny tokenizer's."""
    from experts import legion

    if size == "full":
        return legion.LegionArchitecture()
    return legion.LegionArchitecture(
        text=legion.TextArchitecture(vocab_size=len(legion_tokenizer(words)), **TINY_LEGION_TEXT),
        vision=legion.VisionArchitecture(**TINY_LEGION_VISION),
        sam=legion.SamArchitecture(**TINY_SAM),
    )


def legion_model(size: Size, seed: int = 0, words: Iterable[str] = LEGION_WORDS):
    """experts.legion.LegionModel with random weights, in evaluation mode. Norms and biases start
    constant (ones, zeros): noise tells them apart, so a swapped name in a key map shows."""
    from experts import legion

    with _constructing(size, "legion"):
        torch.manual_seed(seed)
        model = legion.LegionModel(legion_architecture(size, words)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if torch.all(parameter == parameter.flatten()[0]):
                parameter.add_(0.02 * torch.randn_like(parameter))
        model.text_hidden_fcs[0][2].weight.mul_(PROMPT_GAIN)
    return model


def write_legion(
    folder: Path,
    size: Size,
    seed: int = 0,
    *,
    words: Iterable[str] = LEGION_WORDS,
    drop: tuple[str, ...] = (),
    extra: dict[str, torch.Tensor] | None = None,
) -> RandomCheckpoint:
    """`legion_model(size, seed, words)` as published: folder/legion_LE (GLaMM key names, sharded
    safetensors with an index, config.json, the tokenizer), the CLIP tower in folder/
    clip-vit-large-patch14-336 (a transformers CLIPModel folder whose text half, ignored, is tiny),
    and a random detection head (LegionForCls's prediction_head.* keys, seed + 1), which LEGION never
    published.
    `drop` leaves upstream keys out, `extra` adds some: checkpoints that must be refused."""
    from safetensors.torch import save_file
    from transformers import CLIPConfig

    from experts import legion

    words = list(words)
    model = legion_model(size, seed, words)
    architecture = model.architecture
    legion_folder, clip_folder = folder / "legion_LE", folder / CLIP_336_FOLDER
    upstream, tower = {}, {}
    for name, tensor in model.state_dict().items():
        if name.startswith("llava.model.vision_tower."):
            tower["vision_model." + name.removeprefix("llava.model.vision_tower.")] = tensor
        elif (key := upstream_legion_name(name)) is not None:
            upstream[key] = tensor
    # what the published checkpoint also holds and LEGION does not use
    upstream["model.region_encoder.mlvl_fuse.input_conv.0.weight"] = torch.zeros(4, 6, 1, 1)
    upstream["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    upstream.update(extra or {})
    for key in drop:
        del upstream[key]

    legion_folder.mkdir(parents=True)
    save_torch_state_dict(
        {key: tensor.detach().cpu() for key, tensor in upstream.items()}, legion_folder,
        max_shard_size=FULL_SHARD_BYTES if size == "full" else TINY_SHARD_BYTES,
    )
    config = {
        "architectures": ["GLaMMForCausalLM"],
        "model_type": "llava",
        **architecture.text.model_dump(),
        "mm_hidden_size": architecture.vision.hidden_size,
        "mm_vision_select_layer": architecture.vision_feature_layer,
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_use_im_start_end": True,
        "out_dim": architecture.sam.prompt_dim,
        "tie_word_embeddings": False,
    }
    (legion_folder / "config.json").write_text(json.dumps(config, indent=2))
    legion_tokenizer(words).save_pretrained(legion_folder)

    clip_folder.mkdir(parents=True)
    CLIPConfig(
        vision_config=architecture.vision.model_dump(), text_config=TINY_CLIP_TEXT_HALF, projection_dim=8
    ).save_pretrained(clip_folder)
    tower["logit_scale"] = torch.tensor(2.6592)
    tower["text_projection.weight"] = torch.zeros(8, TINY_CLIP_TEXT_HALF["hidden_size"])
    tower = {key: tensor.detach().cpu().contiguous() for key, tensor in tower.items()}
    save_file(tower, clip_folder / "model.safetensors", metadata={"format": "pt"})

    with _constructing(size, "legion"):
        torch.manual_seed(seed + 1)
        head = legion.detection_head(architecture.vision.hidden_size)
    with torch.no_grad():
        head[2].weight.mul_(DETECTION_GAIN[size])
    head_file = folder / "detection_head.safetensors"
    save_file(
        {f"prediction_head.{key}": tensor.cpu() for key, tensor in head.state_dict().items()}, head_file
    )

    params: dict[str, Any] = {"vision_tower": str(clip_folder), "detection_head": str(head_file)}
    if size == "tiny":
        params["sam"] = TINY_SAM
    return RandomCheckpoint(weights=legion_folder, params=params, parameters=_count(model) + _count(head))


WRITERS: dict[str, Callable[..., RandomCheckpoint]] = {
    "fakevlm": write_fakevlm,
    "legion": write_legion,
    "npr": write_npr,
    "univfd": write_univfd,
}


def write_random_checkpoint(
    family: str, folder: Path, size: Size, seed: int = 0, **options
) -> RandomCheckpoint:
    """A random-weight checkpoint of `family` in its upstream layout, written under `folder`;
    `options` are the family writer's keyword arguments (test variants: a vocabulary, keys to drop)."""
    if family not in WRITERS:
        known = ", ".join(sorted(WRITERS))
        raise KeyError(f"no random checkpoint writer for family {family!r}; known: {known}")
    return WRITERS[family](Path(folder), size, seed, **options)

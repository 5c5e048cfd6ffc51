"""LEGION: a tiny GLaMM with random weights, saved in the published checkpoint's layout (GLaMM key
names, sharded safetensors with an index, tokenizer files; the CLIP tower in its own transformers
folder) by tests/support/random_checkpoints.py, whose key names are written out independently of
experts/legion.py's map, and loaded through create_expert(card).load(folder), as a user loads
khr0516/legion_LE."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from skimage import data

from coe.core.yaml_files import load_yaml_model
from experts import legion
from experts.base import ExpertCard, create_expert
from experts.sizing import card_figures
from experts.weights import WeightsNotFoundError
from tests.support.random_checkpoints import (
    GLAMM_TOKENS, TINY_SAM, RandomCheckpoint, legion_model, write_random_checkpoint,
)
from photos import photo_arrays

ANSWER = (
    "Upon examining the image , I found : <p> cat's left ear </p> [SEG] : the ear is blurry . "
    "<p> the hand </p> [SEG] : the hand is deformed . "
    "<p> the shadow </p> [SEG] : the shadow violates physical laws ."
)
PROMPT_WORDS = ["USER:", "ASSISTANT:", "provides", "an", "overview", "of", "picture."]
WORDS = sorted(set(ANSWER.split()) - set(GLAMM_TOKENS)) + PROMPT_WORDS


def write_checkpoint(folder: Path, **options) -> RandomCheckpoint:
    return write_random_checkpoint("legion", folder, "tiny", words=WORDS, **options)


def card(checkpoint: RandomCheckpoint, threshold: float = 0.5, **params) -> ExpertCard:
    """The checkpoint's card, without its detection head unless `params` gives one."""
    return ExpertCard(
        name="legion",
        family="legion",
        capabilities=["detect", "localize", "explain"],
        threshold=threshold,
        params={
            **checkpoint.params,
            "detection_head": None,
            "device": "cpu",
            "batch_size": 2,
            "max_new_tokens": 60,
            **params,
        },
    )


class ScriptedAnswer:
    """A logits processor that makes greedy decoding write `ids`, then </s>: the tokens are forced,
    the hidden states and everything downstream of them come from the model."""

    def __init__(self, ids: list[int], eos: int):
        self.ids, self.eos = ids, eos

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[step] if step < len(self.ids) else self.eos] = 0.0
        return forced


def script_answers(expert, monkeypatch, text: str = ANSWER) -> None:
    from transformers import LogitsProcessorList

    tokenizer = expert.loaded.tokenizer
    llava = expert.loaded.model.llava
    processor = ScriptedAnswer(tokenizer(text).input_ids, tokenizer.eos_token_id)
    monkeypatch.setattr(
        llava,
        "generate",
        functools.partial(llava.generate, logits_processor=LogitsProcessorList([processor])),
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> RandomCheckpoint:
    return write_checkpoint(tmp_path_factory.mktemp("legion"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[np.ndarray]:
    return photo_arrays(
        tmp_path_factory.mktemp("images"),
        [
            ("astronaut.jpg", data.astronaut(), (90, 120)),
            ("chelsea.png", data.chelsea(), (131, 70)),
            ("coffee.jpg", data.coffee(), (64, 96)),
        ],
    )


@pytest.fixture(scope="module")
def expert(checkpoint):
    return create_expert(card(checkpoint)).load(checkpoint.weights)


def test_published_key_names_map_to_modules():
    expected = {
        "model.embed_tokens.weight": ("llava.model.language_model.embed_tokens.weight",),
        "model.layers.31.self_attn.q_proj.weight": (
            "llava.model.language_model.layers.31.self_attn.q_proj.weight",
        ),
        "model.layers.0.mlp.down_proj.weight": ("llava.model.language_model.layers.0.mlp.down_proj.weight",),
        "model.norm.weight": ("llava.model.language_model.norm.weight",),
        "lm_head.weight": ("llava.lm_head.weight",),
        "model.mm_projector.0.weight": ("llava.model.multi_modal_projector.linear_1.weight",),
        "model.mm_projector.2.bias": ("llava.model.multi_modal_projector.linear_2.bias",),
        "model.text_hidden_fcs.0.0.weight": ("text_hidden_fcs.0.0.weight",),
        "model.text_hidden_fcs.0.2.bias": ("text_hidden_fcs.0.2.bias",),
        "model.grounding_encoder.image_encoder.pos_embed": ("sam.vision_encoder.pos_embed",),
        "model.grounding_encoder.image_encoder.patch_embed.proj.weight": (
            "sam.vision_encoder.patch_embed.projection.weight",
        ),
        "model.grounding_encoder.image_encoder.blocks.7.attn.rel_pos_h": (
            "sam.vision_encoder.layers.7.attn.rel_pos_h",
        ),
        "model.grounding_encoder.image_encoder.blocks.0.norm1.weight": (
            "sam.vision_encoder.layers.0.layer_norm1.weight",
        ),
        "model.grounding_encoder.image_encoder.blocks.31.mlp.lin2.bias": (
            "sam.vision_encoder.layers.31.mlp.lin2.bias",
        ),
        "model.grounding_encoder.image_encoder.neck.1.weight": (
            "sam.vision_encoder.neck.layer_norm1.weight",
        ),
        "model.grounding_encoder.image_encoder.neck.2.weight": ("sam.vision_encoder.neck.conv2.weight",),
        "model.grounding_encoder.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
            "sam.prompt_encoder.shared_embedding.positional_embedding",
            "sam.shared_image_embedding.positional_embedding",
        ),
        "model.grounding_encoder.prompt_encoder.point_embeddings.3.weight": (
            "sam.prompt_encoder.point_embed.3.weight",
        ),
        "model.grounding_encoder.prompt_encoder.mask_downscaling.4.bias": (
            "sam.prompt_encoder.mask_embed.layer_norm2.bias",
        ),
        "model.grounding_encoder.prompt_encoder.no_mask_embed.weight": (
            "sam.prompt_encoder.no_mask_embed.weight",
        ),
        "model.grounding_encoder.mask_decoder.output_upscaling.1.weight": (
            "sam.mask_decoder.upscale_layer_norm.weight",
        ),
        "model.grounding_encoder.mask_decoder.output_upscaling.3.bias": (
            "sam.mask_decoder.upscale_conv2.bias",
        ),
        "model.grounding_encoder.mask_decoder.transformer.layers.1.norm4.bias": (
            "sam.mask_decoder.transformer.layers.1.layer_norm4.bias",
        ),
        "model.grounding_encoder.mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight": (
            "sam.mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
        ),
        "model.grounding_encoder.mask_decoder.transformer.norm_final_attn.weight": (
            "sam.mask_decoder.transformer.layer_norm_final_attn.weight",
        ),
        "model.grounding_encoder.mask_decoder.output_hypernetworks_mlps.2.layers.0.weight": (
            "sam.mask_decoder.output_hypernetworks_mlps.2.proj_in.weight",
        ),
        "model.grounding_encoder.mask_decoder.output_hypernetworks_mlps.2.layers.1.weight": (
            "sam.mask_decoder.output_hypernetworks_mlps.2.layers.0.weight",
        ),
        "model.grounding_encoder.mask_decoder.iou_prediction_head.layers.2.bias": (
            "sam.mask_decoder.iou_prediction_head.proj_out.bias",
        ),
        "model.region_encoder.roi_align.pconvs.0.weight": (),
        "model.layers.3.self_attn.rotary_emb.inv_freq": (),
        "model.vision_tower.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": (),
        "model.some_head.weight": None,
    }
    assert {key: legion.map_upstream_key(key) for key in expected} == expected
    assert legion.map_clip_key("vision_model.pre_layrnorm.weight") == (
        "llava.model.vision_tower.pre_layrnorm.weight",
    )
    assert legion.map_clip_key("vision_model.embeddings.position_ids") == ()
    assert legion.map_clip_key("text_model.final_layer_norm.bias") == ()
    assert legion.map_clip_key("unknown.weight") is None


def test_loading_the_published_layout_restores_every_weight(checkpoint, expert):
    index = json.loads((checkpoint.weights / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 1
    assert {
        "model.layers.1.self_attn.q_proj.weight",
        "model.mm_projector.2.bias",
        "model.text_hidden_fcs.0.0.weight",
        "model.grounding_encoder.image_encoder.blocks.1.norm1.weight",
        "model.grounding_encoder.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "model.grounding_encoder.mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
    } <= set(index)
    model = legion_model("tiny", seed=0, words=WORDS)  # what the checkpoint was written from
    loaded = expert.loaded.model.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in model.state_dict().items())
    assert expert.weights_digest and expert.identity.startswith("1:")


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_checkpoint_mismatch_is_an_error_naming_the_keys(tmp_path, change):
    dropped = "model.grounding_encoder.mask_decoder.iou_token.weight"
    checkpoint = write_checkpoint(
        tmp_path,
        drop=(dropped,) if change == "missing" else (),
        extra={"model.detector_head.weight": torch.zeros(2, 2)} if change == "unexpected" else None,
    )
    with pytest.raises(legion.CheckpointMismatchError) as raised:
        create_expert(card(checkpoint)).load(checkpoint.weights)
    named = "sam.mask_decoder.iou_token.weight" if change == "missing" else "model.detector_head.weight"
    assert named in str(raised.value)


def test_missing_checkpoint_says_where_it_is_published(tmp_path, checkpoint):
    with pytest.raises(WeightsNotFoundError, match=r"khr0516/legion_LE.*hf download"):
        create_expert(card(checkpoint)).load(tmp_path / "absent")


def test_localize_masks_each_phrase_at_the_image_size(expert, images, monkeypatch):
    script_answers(expert, monkeypatch)
    localizations = expert.localize(images)
    assert len(localizations) == len(images)
    for image, found in zip(images, localizations, strict=True):
        assert found.explanation == (
            "Upon examining the image, I found: cat's left ear: the ear is blurry. "
            "the hand: the hand is deformed. the shadow: the shadow violates physical laws."
        )
        assert [a.phrase for a in found.artifacts] == ["cat's left ear", "the hand", "the shadow"]
        assert [a.category for a in found.artifacts] == ["distortion", "structure", "physics"]
        assert found.artifacts[1].explanation == "the hand: the hand is deformed."
        masks = [artifact.mask for artifact in found.artifacts]
        assert all(mask.shape == image.shape[:2] and mask.dtype == bool for mask in masks)
        assert np.array_equal(found.union_mask, np.logical_or.reduce(masks))
        # each [SEG]'s own hidden state, through text_hidden_fcs and SAM, gives its own mask
        assert len({mask.tobytes() for mask in masks}) == len(masks)


def test_masks_follow_the_text_projection(checkpoint, images, monkeypatch):
    shifted = create_expert(card(checkpoint)).load(checkpoint.weights)
    script_answers(shifted, monkeypatch)
    projection = shifted.loaded.model.text_hidden_fcs[0][2]
    with torch.no_grad():
        projection.weight.zero_()
        projection.bias.fill_(5.0)
    masks = [a.mask for a in shifted.localize(images[:1])[0].artifacts]
    # identical prompts give identical masks, whatever the phrase
    assert all(np.array_equal(mask, masks[0]) for mask in masks)


def test_seg_states_are_the_hidden_states_that_emitted_each_token(expert, images, monkeypatch):
    script_answers(expert, monkeypatch)
    loaded = expert.loaded
    model = loaded.model
    pixels = expert._clip_pixels(images[:2])
    with torch.inference_mode():
        generated, states = model.answer(loaded.prompt, pixels, 60, loaded.eos_token_id, loaded.pad_token_id)
        image_features, _ = model.encode_image(pixels)
        embed = model.llava.get_input_embeddings()
        before, after = (embed(ids)[None].expand(2, -1, -1) for ids in loaded.prompt)
        sequence = torch.cat([before, image_features, after, embed(generated[:, :-1])], dim=1)
        full = model.llava.model.language_model(inputs_embeds=sequence).last_hidden_state
    first_answer_position = before.shape[1] + image_features.shape[1] + after.shape[1] - 1
    assert torch.allclose(states, full[:, first_answer_position:], atol=1e-5)
    assert (generated == loaded.seg_token_id).sum(dim=1).tolist() == [3, 3]


def test_each_mask_comes_from_the_state_that_wrote_its_seg(expert, images, monkeypatch):
    script_answers(expert, monkeypatch)
    loaded, image = expert.loaded, images[1]
    artifacts = expert.localize([image])[0].artifacts
    with torch.inference_mode():
        generated, states = loaded.model.answer(
            loaded.prompt, expert._clip_pixels([image]), 60, loaded.eos_token_id, loaded.pad_token_id
        )
        writers = (generated[0] == loaded.seg_token_id).nonzero().flatten()
        pixels, resized = legion.sam_input(image, TINY_SAM["image_size"])
        low_res = loaded.model.mask_logits(
            loaded.model.sam.get_image_embeddings(pixels[None]), states[0, writers]
        )
        logits = legion.upsample_mask_logits(low_res, TINY_SAM["image_size"], resized, image.shape[:2])
    assert len(artifacts) == len(writers) == 3
    assert all(np.array_equal(a.mask, (mask > 0).numpy()) for a, mask in zip(artifacts, logits, strict=True))


def test_unscripted_generation_localises_every_image(expert, images):
    found = expert.localize(images)
    assert [f.union_mask.shape for f in found] == [image.shape[:2] for image in images]
    assert all(f.explanation is not None and "<p>" not in f.explanation for f in found)


def test_detection_without_the_unpublished_head_is_a_clear_error(expert, images):
    with pytest.raises(RuntimeError, match=r"not published.*localize"):
        expert.predict_proba(images)


def test_verdict_gate_leaves_images_judged_real_alone(checkpoint, images, monkeypatch):
    head = checkpoint.params["detection_head"]
    always = create_expert(card(checkpoint, detection_head=head, gate="always")).load(checkpoint.weights)
    script_answers(always, monkeypatch)
    outputs = always.predict(images)
    assert all(len(output.artifacts) == 3 and output.union_mask is not None for output in outputs)
    probabilities = np.array([output.p_fake for output in outputs])
    assert np.allclose(probabilities, always.predict_proba(images))
    low, high = np.sort(probabilities)[[0, -1]]
    assert high - low > 1e-3

    threshold = float((low + high) / 2)
    gated = create_expert(card(checkpoint, detection_head=head, threshold=threshold)).load(checkpoint.weights)
    script_answers(gated, monkeypatch)
    for output in gated.predict(images):
        fake = output.p_fake >= threshold
        assert output.label == ("fake" if fake else "real")
        assert len(output.artifacts) == (3 if fake else 0)
        assert (output.union_mask is not None) == fake


def test_detection_head_loads_strictly(checkpoint, tmp_path):
    path = tmp_path / "head.safetensors"
    save_file({"prediction_head.0.weight": torch.zeros(64, 32)}, path)
    with pytest.raises(RuntimeError, match="Missing key"):
        create_expert(card(checkpoint, detection_head=str(path))).load(checkpoint.weights)


def test_answer_parsing_keeps_each_phrase_with_its_sentence():
    explanation, artifacts = legion.parse_answer(
        [
            "Upon examining the image. I have found: <p> A man </p>",
            (
                " with a twisted zipper. To elaborate, I have found the following artifacts. "
                "<p> Man's right ear. </p>"
            ),
            ":The ear is shown at an incorrect angle. ",
            " and some trailing words",
        ]
    )
    assert explanation == (
        "Upon examining the image. I have found: A man with a twisted zipper. To elaborate, I have found the "
        "following artifacts. Man's right ear.:The ear is shown at an incorrect angle. "
        "and some trailing words"
    )
    assert artifacts == [
        ("A man", "I have found: A man with a twisted zipper."),
        ("Man's right ear.", "Man's right ear.:The ear is shown at an incorrect angle."),
        ("The ear is shown at an incorrect angle.", "The ear is shown at an incorrect angle."),
    ]
    assert legion.artifact_category("the color of the sky is oversaturated") == "distortion"
    assert legion.artifact_category("a cat sits on a ledge") == "other"


def test_card_carries_the_full_size_figures():
    card_file = Path(__file__).parents[1] / "configs" / "experts" / "legion.yaml"
    published = load_yaml_model(card_file, ExpertCard)
    footprint = legion.LegionExpert.full_size_footprint(legion.LegionParams.model_validate(published.params))
    # Vicuna-7B (6.74 B with 32007 tokens) + CLIP ViT-L/14 (0.30 B) + SAM ViT-H (0.64 B) + projector and fcs
    assert 7.6e9 < footprint.parameters < 7.8e9
    figures = card_figures(footprint)
    assert (published.cost, published.resources) == (figures.cost, figures.resources)
    assert published.weights == legion.LegionExpert.default_weights
    assert published.capabilities == ["detect", "localize", "explain"]


def test_coe_route_localises_with_legion_and_writes_a_png_per_phrase_and_the_union(
    tmp_path, checkpoint, trained_config, monkeypatch
):
    """The product path: LEGION's card names the checkpoint folder, `coe route` loads it through the
    expert pool as the localiser, and every verdict carries LEGION's artifacts and mask files."""
    import csv
    import shutil

    from PIL import Image

    from coe.config import CONFIG_DIR, load_config
    from coe.pipeline import route
    from coe.results import RESULTS_CSV, RESULTS_JSONL
    from photos import write_photos

    cards = tmp_path / "cards"
    shutil.copytree(CONFIG_DIR / "experts", cards)
    localiser = card(checkpoint).model_copy(update={"weights": str(checkpoint.weights)})
    (cards / "legion.yaml").write_text(yaml.safe_dump(localiser.model_dump(mode="json")))
    load = legion.LegionExpert.load

    def load_and_script(self, weights):
        load(self, weights)
        script_answers(self, monkeypatch)
        return self

    monkeypatch.setattr(legion.LegionExpert, "load", load_and_script)
    photos = write_photos(tmp_path / "photos", [
        ("astronaut.jpg", data.astronaut(), (90, 120)), ("chelsea.png", data.chelsea(), (131, 70)),
    ])
    config = load_config(overrides=[
        f"home={trained_config.home}", f"features.weights={trained_config.features.weights}",
        f"experts_dir={cards}", "localize.expert=legion", "localize.verdicts=[real,fake,uncertain]",
    ])
    out = tmp_path / "out"
    summary = route(config, [tmp_path / "photos"], out, show_progress=False)
    assert summary.errors == {} and summary.paths == len(photos)
    rows = [json.loads(line) for line in (out / RESULTS_JSONL).read_text().splitlines()]
    for row in rows:
        size = (row["image"]["width"], row["image"]["height"])
        found = row["localization"]
        assert found["expert"] == "legion" and "the ear is blurry" in found["explanation"]
        assert [(a["phrase"], a["category"]) for a in found["artifacts"]] == [
            ("cat's left ear", "distortion"), ("the hand", "structure"), ("the shadow", "physics"),
        ]
        union = np.zeros(size[::-1], dtype=bool)
        for artifact in found["artifacts"]:
            with Image.open(out / artifact["mask_file"]) as mask:
                assert mask.size == size
                union |= np.asarray(mask) > 0
        with Image.open(out / row["mask_file"]) as shown:
            assert np.array_equal(np.asarray(shown) > 0, union)
        assert "legion was asked where the artifacts are and localised 3 artifact(s)" in row["explanation"]
    with (out / RESULTS_CSV).open() as handle:
        artifacts = {row["artifacts"] for row in csv.DictReader(handle)}
    assert artifacts == {"distortion: cat's left ear | structure: the hand | physics: the shadow"}
    from coe.reports.run_report import DATA_DIR

    chunk = (out / DATA_DIR / "rows-00000.js").read_text()  # the run report's rows: one overlay per phrase
    for shown in json.loads(chunk[chunk.index(",") + 1 : chunk.rindex(")")]):
        assert [mask["phrase"] for mask in shown["masks"]] == ["cat's left ear", "the hand", "the shadow"]
        assert all((out / mask["overlay"]).is_file() for mask in shown["masks"])

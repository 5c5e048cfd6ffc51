"""FakeVLM expert: a tiny LLaVA (random weights) saved in the Hugging Face layout of lingcco/fakeVLM
(tests/support/random_checkpoints.py), loaded back through create_expert(card).load(folder) and run on
real photographs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import experts.fakevlm  # noqa: F401  (registers the family)
from coe.core.yaml_files import load_yaml_model
from experts.base import ExpertCard, create_expert
from experts.fakevlm import FakeVLMExpert, FakeVLMParams, build_prompt
from experts.sizing import card_figures
from experts.weights import WeightsNotFoundError
from tests.support.random_checkpoints import FAKEVLM_WORDS, write_random_checkpoint
from photos import photo_arrays

CARD = Path(__file__).resolve().parents[1] / "configs" / "experts" / "fakevlm.yaml"
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
RAW_SCORED_TEXT = "<image>Does the image looks real/fake? This is a"


def weights_only(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy(source / name, folder / name)
    return folder


def fakevlm_card(**params) -> ExpertCard:
    card = load_yaml_model(CARD, ExpertCard)
    return card.model_copy(update={"params": {**card.params, "device": "cpu", "max_new_tokens": 6, **params}})


@pytest.fixture(scope="module")
def tiny_fakevlm(tmp_path_factory) -> Path:
    return write_random_checkpoint("fakevlm", tmp_path_factory.mktemp("fakeVLM"), "tiny").weights


@pytest.fixture(scope="module")
def photographs(tmp_path_factory) -> list[np.ndarray]:
    """Real photographs written as JPEG and PNG at different sizes and read back."""
    return photo_arrays(
        tmp_path_factory.mktemp("photographs"),
        [
            ("astronaut.jpg", data.astronaut(), (200, 160)),
            ("chelsea.png", data.chelsea(), (120, 90)),
            ("coffee.jpg", data.coffee(), (90, 130)),
            ("rocket.png", data.rocket(), (64, 96)),
            ("astronaut-crop.jpg", data.astronaut()[100:400, 50:300], (75, 90)),
        ],
    )


def reference_p_fake(folder: Path, image: np.ndarray, text: str = RAW_SCORED_TEXT) -> float:
    """P(fake) / (P(fake) + P(real)) for the next token, straight from the saved model's logits."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    inputs = processor(text=text, images=Image.fromarray(image), return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(model(**inputs).logits[0, -1], dim=-1)
    fake, real = processor.tokenizer.convert_tokens_to_ids(["fake", "real"])
    return float(probabilities[fake] / (probabilities[fake] + probabilities[real]))


def test_p_fake_is_the_renormalised_next_token_probability_of_fake(tiny_fakevlm, photographs):
    expert = create_expert(fakevlm_card()).load(tiny_fakevlm)
    p_fake = expert.predict_proba(photographs[:3])
    assert p_fake.shape == (3,)
    for p, image in zip(p_fake, photographs[:3]):
        assert abs(p - reference_p_fake(tiny_fakevlm, image)) < 1e-4
    assert np.ptp(p_fake) > 1e-6, "different images must give different answers"
    assert len(expert.weights_digest) == 64


def test_a_batch_bigger_than_batch_size_matches_one_by_one(tiny_fakevlm, photographs):
    expert = create_expert(fakevlm_card(batch_size=2)).load(tiny_fakevlm)
    batched = expert.predict_proba(photographs)
    one_by_one = np.array([expert.predict_proba([image])[0] for image in photographs])
    assert batched.shape == (len(photographs),)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_predict_gives_label_and_the_greedy_answer_without_the_prompt(tiny_fakevlm, photographs):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    card = fakevlm_card(batch_size=2, max_new_tokens=5).model_copy(update={"threshold": 0.3})
    outputs = create_expert(card).load(tiny_fakevlm).predict(photographs[:3])
    assert [output.label for output in outputs] == ["fake" if o.p_fake >= 0.3 else "real" for o in outputs]
    assert all(output.expert == "fakevlm" and output.latency_ms > 0 for output in outputs)

    model = LlavaForConditionalGeneration.from_pretrained(tiny_fakevlm, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(tiny_fakevlm, local_files_only=True)
    for output, image in zip(outputs, photographs[:3]):
        prompt = build_prompt(FakeVLMParams().prompt, "raw")
        inputs = processor(text=prompt, images=Image.fromarray(image), return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        answer = generated[0, inputs["input_ids"].shape[1]:]
        expected = processor.tokenizer.decode(answer, skip_special_tokens=True)
        assert output.explanation == (expected.strip() or None)
        assert "Does" not in (output.explanation or "")
    assert any(output.explanation for output in outputs)

    silent = create_expert(fakevlm_card(explain=False)).load(tiny_fakevlm).predict(photographs[:2])
    assert [output.explanation for output in silent] == [None, None]
    np.testing.assert_allclose([o.p_fake for o in silent], [o.p_fake for o in outputs[:2]], atol=1e-5)


def test_chat_and_raw_prompt_styles_ask_differently(tiny_fakevlm, photographs):
    prompt = FakeVLMParams().prompt
    assert prompt == "<image>Does the image looks real/fake?"
    assert build_prompt(prompt, "raw") == prompt
    assert build_prompt(prompt, "chat") == "USER: <image>\nDoes the image looks real/fake? ASSISTANT:"
    raw = create_expert(fakevlm_card(prompt_style="raw")).load(tiny_fakevlm).predict_proba(photographs[:2])
    chat = create_expert(fakevlm_card(prompt_style="chat")).load(tiny_fakevlm).predict_proba(photographs[:2])
    chat_scored_text = build_prompt(prompt, "chat") + " This is a"
    chat_reference = reference_p_fake(tiny_fakevlm, photographs[0], text=chat_scored_text)
    assert abs(chat[0] - chat_reference) < 1e-4
    assert not np.allclose(raw, chat, atol=1e-4)


def test_a_prompt_without_exactly_one_image_token_is_rejected():
    with pytest.raises(ValueError, match="<image>"):
        FakeVLMParams(prompt="Does the image looks real/fake?")


def test_processor_comes_from_params_when_the_weights_folder_has_none(tiny_fakevlm, photographs, tmp_path):
    folder = weights_only(tiny_fakevlm, tmp_path / "fakeVLM")
    expert = create_expert(fakevlm_card(processor=str(tiny_fakevlm))).load(folder)
    reference = create_expert(fakevlm_card()).load(tiny_fakevlm)
    np.testing.assert_allclose(
        expert.predict_proba(photographs[:2]), reference.predict_proba(photographs[:2]), atol=1e-6
    )


def test_an_old_processor_config_without_patch_size_expands_the_image(tiny_fakevlm, photographs, tmp_path):
    # the same seed gives the same weights as tiny_fakevlm; only the processor config is older
    folder = write_random_checkpoint("fakevlm", tmp_path / "fakeVLM", "tiny", old_processor=True).weights
    p_fake = create_expert(fakevlm_card()).load(folder).predict_proba(photographs[:1])
    assert abs(p_fake[0] - reference_p_fake(tiny_fakevlm, photographs[0])) < 1e-4


def test_loads_the_default_weights_from_the_hub_cache(tiny_fakevlm, photographs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--lingcco--fakeVLM"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_fakevlm, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    expert = create_expert(fakevlm_card())
    expert.load(expert.card.weights or FakeVLMExpert.default_weights)
    reference = create_expert(fakevlm_card()).load(tiny_fakevlm)
    np.testing.assert_allclose(
        expert.predict_proba(photographs[:1]), reference.predict_proba(photographs[:1]), atol=1e-6
    )


def test_missing_weights_say_where_the_published_checkpoint_is(tiny_fakevlm, tmp_path, monkeypatch):
    expert = create_expert(fakevlm_card())
    with pytest.raises(WeightsNotFoundError, match="lingcco/fakeVLM"):
        expert.load(tmp_path / "absent")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_fakevlm / "config.json", config_only / "config.json")
    with pytest.raises(WeightsNotFoundError, match="no LLaVA weights.*lingcco/fakeVLM"):
        expert.load(config_only)

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="llava-hf/llava-1.5-7b-hf"):
        expert.load(weights_only(tiny_fakevlm, tmp_path / "weights-only"))


def test_a_tokenizer_that_cannot_encode_fake_is_rejected(tmp_path):
    words = [word for word in FAKEVLM_WORDS if word != "fake"]
    folder = write_random_checkpoint("fakevlm", tmp_path / "fakeVLM", "tiny", words=words).weights
    with pytest.raises(ValueError, match="cannot encode the verdict word 'fake'"):
        create_expert(fakevlm_card()).load(folder)


def test_a_checkpoint_with_a_missing_tensor_is_refused(tiny_fakevlm, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = weights_only(tiny_fakevlm, tmp_path / "fakeVLM")
    tensors = load_file(folder / "model.safetensors")
    dropped = next(name for name in tensors if "multi_modal_projector" in name)
    del tensors[dropped]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="missing_keys.*multi_modal_projector"):
        create_expert(fakevlm_card(processor=str(tiny_fakevlm))).load(folder)


def test_card_figures_come_from_the_full_size_llava_1_5_7b():
    footprint = FakeVLMExpert.full_size_footprint(FakeVLMParams())
    assert abs(footprint.parameters - 7.06e9) < 0.01e9
    assert footprint.generated_tokens == 256 and footprint.dtype == "bfloat16"
    # one prefill of ~590 tokens through 7B parameters: about 2 * 7e9 * 590 FLOPs
    assert 7000 < footprint.forward_gflops < 9500
    card = load_yaml_model(CARD, ExpertCard)
    figures = card_figures(FakeVLMExpert.full_size_footprint(FakeVLMExpert.Params()))
    assert (card.cost, card.resources) == (figures.cost, figures.resources)
    assert card.capabilities == ["detect", "explain"]
    assert set(card.subjects) == {"animal", "human", "object", "scene", "satellite", "document", "deepfake"}

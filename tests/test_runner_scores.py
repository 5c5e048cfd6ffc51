"""The benchmark runner's localisation and explanation scores, on a SynthScars benchmark in the
upstream layout and an expert that localises and explains (registered here, as a user's expert
would be): mIoU / pixel F1 against rasterised polygons, also after a resize, ROUGE-L and CSS."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydantic import BaseModel

from benchmarks.explanations import SentenceSimilarity
from benchmarks.perturbations import parse_perturbations
from benchmarks.readers import BenchmarkSpec, read_benchmark
from benchmarks.runner import ExpertUnderTest, LoadedBenchmark, expert_metrics, run_benchmarks
from coe.core.records import ExpertOutput
from experts.base import FAMILIES, Expert, ExpertCard

REFERENCE = "the hand has six fingers"
SQUARE = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]  # pixels 10..29 (PIL fills the outline too)


class MaskEcho(Expert):
    """Localises the bright square of each image (where the fixture drew it) and explains it with
    the reference sentence when the left half of the image is bright."""

    class Params(BaseModel):
        pass

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.full(len(images), 0.8)

    def predict(self, images: Sequence[np.ndarray]) -> list[ExpertOutput]:
        outputs = []
        for image, output in zip(images, super().predict(images), strict=True):
            explains = image[:, : image.shape[1] // 2].mean() > 100
            output.explanation = REFERENCE if explains else "blurry sky is too smooth"
            outputs.append(output.with_union_mask(image.mean(axis=2) > 200))
        return outputs


@pytest.fixture(scope="module", autouse=True)
def _registered_test_family():
    """The test's family exists for this module's tests only."""
    with FAMILIES.registered("test-mask-echo", MaskEcho):
        yield


def synthscars(tmp_path: Path) -> BenchmarkSpec:
    root = tmp_path / "SynthScars" / "test"
    (root / "images").mkdir(parents=True)
    entries = []
    for index, (left, drawn) in enumerate([(0, True), (100, True), (0, False)]):
        pixels = np.full((64, 64, 3), 30, dtype=np.uint8)
        pixels[:, :32] += left
        if drawn:
            pixels[10:30, 10:30] = 255
        Image.fromarray(pixels).save(root / "images" / f"{index}.png")
        refs = [{"sentence": "hand", "explanation": "has six fingers", "segmentation": [SQUARE], "bbox": None}]
        entries.append({str(index): {"img_file_name": f"{index}.png", "caption": REFERENCE, "refs": refs}})
    (root / "annotations").mkdir()
    (root / "annotations" / "test.json").write_text(json.dumps(entries))
    return BenchmarkSpec(name="scars", reader="synthscars", root=root, annotations="annotations/test.json",
                         images="images")


def test_masks_and_explanations_are_scored_against_the_ground_truth(tmp_path, tiny_sentence_model):
    spec = synthscars(tmp_path)
    items = read_benchmark(spec)
    card = ExpertCard(name="echo", family="test-mask-echo", capabilities=["detect", "localize", "explain"])
    expert = ExpertUnderTest(name="echo", expert=MaskEcho(card), identity="1:test", cost=3.0)
    summary = run_benchmarks(
        [expert], [LoadedBenchmark(spec, items)], parse_perturbations(["none", "resize:0.5"]), tmp_path / "out",
        similarity=SentenceSimilarity(tiny_sentence_model), show_progress=False,
    )
    frame = pd.read_parquet(summary.outcomes).set_index(["perturbation", "path"])
    paths = [str(item.path) for item in items]
    # The run wrote each mask the expert attached as a PNG of the image the expert saw.
    for (perturbation, _), mask_file in frame["mask_file"].items():
        with Image.open(tmp_path / "out" / mask_file) as mask:
            assert mask.mode == "L" and mask.size == ((32, 32) if perturbation == "resize:0.5" else (64, 64))
    assert frame["mask_file"].nunique() == len(frame)
    # Image 0 and 1: the predicted square is the annotated polygon; image 2: nothing predicted.
    for perturbation in ("none", "resize:0.5"):
        rows = frame.loc[perturbation]
        assert rows.loc[paths[0], "mask_iou"] == pytest.approx(1.0, abs=0.1)
        assert rows.loc[paths[1], "mask_f1"] == pytest.approx(1.0, abs=0.1)
        assert rows.loc[paths[2], "mask_iou"] == 0.0 and rows.loc[paths[2], "mask_f1"] == 0.0
    none = frame.loc["none"]
    reference = items[0].explanation
    assert none.loc[paths[1], "explanation"] == REFERENCE and none.loc[paths[0], "explanation"] != REFERENCE
    assert none.loc[paths[1], "rouge_l"] > none.loc[paths[0], "rouge_l"]
    assert none.loc[paths[1], "css"] > none.loc[paths[0], "css"]
    assert reference and all(-1.0 <= value <= 1.0 + 1e-6 for value in none["css"])
    metrics = expert_metrics(pd.read_parquet(summary.outcomes))
    overall = metrics[(metrics["group_by"] == "all") & (metrics["perturbation"] == "none")].iloc[0]
    assert overall["miou"] == pytest.approx(none["mask_iou"].mean()) and overall["cost"] == 3.0
    assert overall["rouge_l"] == pytest.approx(none["rouge_l"].mean()) and np.isnan(overall["auc"])  # fakes only

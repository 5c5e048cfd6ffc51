"""The localising stage of `coe route`: after the verdict, images labelled as configured go to a
localiser; its masks are written as PNG files (one per artifact, one union) and its artifacts and
explanation reach the verdict, results.csv and the merger's explanation."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel

from coe.config import CONFIG_DIR, load_config
from coe.core.records import Artifact, Localization
from coe.pipeline import PipelineError, route
from coe.results import RESULTS_CSV, RESULTS_JSONL
from experts.base import FAMILIES, Expert, Localizer

NARROW = 70  # the test localiser fails on images narrower than this


class BrightDarkLocalizer(Expert, Localizer):
    """Localises the brightest and the darkest tenth of the pixels, as two artifacts."""

    class Params(BaseModel):
        pass

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.full(len(images), 0.5)

    def localize(self, images: Sequence[np.ndarray]) -> list[Localization]:
        found = []
        for image in images:
            if image.shape[1] < NARROW:
                raise ValueError(f"too narrow: {image.shape[1]} px")
            grey = image.mean(axis=2)
            found.append(Localization(
                expert=self.name, explanation="the brightest and darkest areas look wrong",
                artifacts=[
                    Artifact(category="physics", phrase="bright glare").with_mask(grey >= np.quantile(grey, 0.9)),
                    Artifact(category="distortion", phrase="dark smear").with_mask(grey <= np.quantile(grey, 0.1)),
                ],
            ))
        return found


@pytest.fixture(scope="module", autouse=True)
def _registered_test_family():
    """The test's family exists for this module's tests only."""
    with FAMILIES.registered("test-bright-dark-localizer", BrightDarkLocalizer):
        yield


@pytest.fixture
def localizing_config(tmp_path, trained_config):
    cards = tmp_path / "cards"
    shutil.copytree(CONFIG_DIR / "experts", cards)
    (cards / "brightdark.yaml").write_text(
        "name: brightdark\nfamily: test-bright-dark-localizer\ncapabilities: [localize, explain]\n"
    )

    def configure(*verdicts: str):
        return load_config(overrides=[
            f"home={trained_config.home}", f"features.weights={trained_config.features.weights}",
            f"experts_dir={cards}", "localize.expert=brightdark", f"localize.verdicts=[{','.join(verdicts)}]",
        ])

    return configure


@pytest.fixture
def photos(tmp_path) -> Path:
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(data.astronaut()).resize((160, 120)).save(folder / "astronaut.jpg", quality=92)
    Image.fromarray(data.chelsea()).save(folder / "chelsea.png")
    Image.fromarray(data.coffee()).resize((NARROW - 10, 90)).save(folder / "narrow_coffee.png")
    return folder


def test_every_verdict_localised_writes_masks_per_artifact_and_union(tmp_path, localizing_config, photos):
    out = tmp_path / "out"
    summary = route(localizing_config("real", "fake", "uncertain"), [photos], out, show_progress=False)
    assert summary.errors == {}
    rows = {Path(row["path"]).name: row for row in map(json.loads, (out / RESULTS_JSONL).read_text().splitlines())}
    for name in ("astronaut.jpg", "chelsea.png"):
        row = rows[name]
        size = (row["image"]["width"], row["image"]["height"])
        artifacts = row["localization"]["artifacts"]
        assert [a["phrase"] for a in artifacts] == ["bright glare", "dark smear"]
        masks = []
        for artifact in artifacts:
            with Image.open(out / artifact["mask_file"]) as mask:
                assert mask.size == size and mask.mode == "L"
                masks.append(np.asarray(mask) > 0)
            x0, y0, x1, y1 = artifact["bbox"]
            assert masks[-1][y0:y1, x0:x1].any() and not masks[-1][:y0].any() and not masks[-1][y1:].any()
        with Image.open(out / row["mask_file"]) as union:
            assert union.size == size
            assert np.array_equal(np.asarray(union) > 0, masks[0] | masks[1])
        assert row["mask_file"] == row["localization"]["union_mask_file"]
        assert "brightdark was asked where the artifacts are and localised 2 artifact(s)" in row["explanation"]
        assert "physics: bright glare" in row["explanation"]
    # The localiser failed on one image: the verdict stands, and the reason says what happened.
    narrow = rows["narrow_coffee.png"]
    assert narrow["error"] is None and narrow["label"] in {"real", "fake", "uncertain"}
    assert narrow["localization"] is None and narrow["mask_file"] is None
    assert "localising with brightdark failed: ValueError: too narrow" in narrow["reason"]
    with (out / RESULTS_CSV).open() as handle:
        table = {Path(row["path"]).name: row for row in csv.DictReader(handle)}
    assert table["chelsea.png"]["artifacts"] == "physics: bright glare | distortion: dark smear"
    assert table["chelsea.png"]["mask_file"] == rows["chelsea.png"]["mask_file"]


def test_only_the_configured_verdicts_are_localised(tmp_path, localizing_config, photos):
    everything = tmp_path / "everything"
    route(localizing_config("real", "fake", "uncertain"), [photos], everything, show_progress=False)
    labels = {
        Path(row["path"]).name: row["label"]
        for row in map(json.loads, (everything / RESULTS_JSONL).read_text().splitlines())
    }
    for label in sorted(set(labels.values())):
        out = tmp_path / label
        route(localizing_config(label), [photos], out, show_progress=False)
        for row in map(json.loads, (out / RESULTS_JSONL).read_text().splitlines()):
            name = Path(row["path"]).name
            assert row["label"] == labels[name]
            localised = row["localization"] is not None or "localising with" in row["reason"]
            assert localised == (row["label"] == label), name
        written = {path.parent.name for path in (out / "masks").rglob("*.png")} if (out / "masks").exists() else set()
        assert len(written) == sum(
            labels[name] == label for name in labels if not name.startswith("narrow")
        )


def test_a_localiser_that_cannot_localise_is_refused(tmp_path, trained_config):
    config = load_config(overrides=[
        f"home={trained_config.home}", f"features.weights={trained_config.features.weights}", "localize.expert=dct",
    ])
    with pytest.raises(PipelineError, match="'dct' \\(dct\\) does not localise"):
        route(config, [trained_config.home / "benchmarks/builtin/real"], tmp_path / "out", show_progress=False)

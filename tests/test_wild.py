"""`coe wild`: the wild check on real files, through the real CLI, under both protocols."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bad_files import photo
from coe.core.imaging import decode_image_bytes
from coe.wild import Matching, matched, matched_file, run_wild_check
from test_route import COE, cli_settings


def test_matched_images_are_the_same_crop_codec_and_quality_with_nothing_else():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0131] = "Made with a generator"  # Software
    photo(400, 300).save(buffer, format="PNG", exif=exif)
    original = decode_image_bytes(buffer.getvalue(), "big.png")
    image = matched(original, Matching(side=128, jpeg_quality=80), original_limits())
    assert (image.record.width, image.record.height, image.record.format) == (128, 128, "JPEG")
    encoded = Image.open(io.BytesIO(matched_file(original, Matching(side=128))))
    assert not encoded.getexif() and "icc_profile" not in encoded.info  # nothing but pixels
    assert image.record.id != original.record.id  # a different file, cached apart from the original
    # The centre, pixel for pixel up to the JPEG's loss: cropped, not resampled.
    def error(top: int, left: int) -> float:
        window = original.pixels[top : top + 128, left : left + 128].astype(int)
        return float(np.abs(image.pixels.astype(int) - window).mean())

    assert error(86, 136) < 6 and error(86, 136) < error(88, 138) / 2
    small = decode_image_bytes(_png(photo(100, 60)), "small.png")
    refused = matched(small, Matching(side=128), original_limits())
    assert refused.code == "image_too_small" and "never rescaled" in refused.message


def original_limits():
    from coe.core.imaging import DecodeLimits

    return DecodeLimits()


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def make_wild_folder(root) -> None:
    for index in range(4):
        (root / "real" / "camera-a").mkdir(parents=True, exist_ok=True)
        photo(300 + 10 * index, 280).save(root / "real" / "camera-a" / f"{index}.jpg", quality=92)
    for index, generator in enumerate(["gen-x", "gen-x", "gen-y", "gen-y"]):
        (root / generator / "fake").mkdir(parents=True, exist_ok=True)
        photo(256, 256).rotate(90 * index).save(root / generator / "fake" / f"{index}.png")


def test_a_wild_check_scores_every_system_under_both_protocols(tmp_path, trained_config):
    make_wild_folder(tmp_path / "wild")
    (tmp_path / "wild" / "gen-y" / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = run_wild_check(trained_config, tmp_path / "wild", tmp_path / "out", show_progress=False)
    systems = {(row.protocol, row.system): row for row in report.systems}
    assert set(systems) == {(p, s) for p in ("as-is", "matched") for s in ("routed", *trained_config.experts)}
    for row in systems.values():
        assert row.n == 8 and row.errors == 1
        assert 0.0 <= row.auc <= 1.0 and 0.0 <= row.uncertain <= 1.0 and 0.0 <= row.ece <= 1.0
        assert list(row.accuracy_at_coverage) == ["100%", "80%", "60%", "40%", "20%"]
        assert row.accuracy_at_coverage["100%"] == row.accuracy  # everything answered: plain accuracy
    groups = {(row.protocol, row.system, row.label, row.group): row for row in report.groups}
    assert {key[2:] for key in groups} == {("real", "unknown"), ("fake", "gen-x"), ("fake", "gen-y")}
    assert groups[("matched", "routed", "fake", "gen-x")].n == 2
    written = json.loads((tmp_path / "out" / "wild.json").read_text())
    assert len(written["systems"]) == 8
    with (tmp_path / "out" / "groups.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(report.groups)


def test_the_blur_confound_is_measured_and_held_equal(tmp_path, trained_config):
    # The reals are one photo written three ways (PNG at three compression levels: other bytes, the
    # same pixels); three fakes are blurred copies, so blur tells them apart, and one more fake has
    # the reals' very pixels: the only pairs of equal sharpness are its three, where the rule ties.
    for folder in ("real", "fake"):
        (tmp_path / "wild" / folder).mkdir(parents=True)
    picture = photo(300, 300)
    for level in (1, 6, 9):
        picture.save(tmp_path / "wild" / "real" / f"level {level}.png", compress_level=level)
    for radius in (1, 2, 3):
        picture.filter(ImageFilter.GaussianBlur(radius)).save(tmp_path / "wild" / "fake" / f"blur {radius}.png")
    picture.save(tmp_path / "wild" / "fake" / "sharp.png")
    report = run_wild_check(trained_config, tmp_path / "wild", tmp_path / "out", experts=["dct"], show_progress=False)
    expected = [(protocol, (9 + 3 * 0.5) / 12, 0.5, 3) for protocol in ("as-is", "matched")]
    assert [(r.protocol, r.auc, r.auc_at_equal_sharpness, r.equal_sharpness_pairs) for r in report.confounds] == expected
    assert [row.equal_sharpness_pairs for row in report.systems] == [3, 3, 3, 3]
    written = json.loads((tmp_path / "out" / "wild.json").read_text())
    assert [row["equal_sharpness_pairs"] for row in written["confounds"]] == [3, 3]


def test_the_command_reads_a_manifest_and_prints_both_protocols(tmp_path, trained_config):
    make_wild_folder(tmp_path / "wild")
    manifest = tmp_path / "wild" / "labels.csv"
    rows = [("real/camera-a/0.jpg", "real", "camera A"), ("real/camera-a/1.jpg", "real", "camera A"),
            ("gen-x/fake/0.png", "fake", "gen [x]"), ("gen-y/fake/2.png", "fake", "gen y")]
    manifest.write_text("path,label,generator\n" + "".join(f"{p},{label},{g}\n" for p, label, g in rows))
    result = subprocess.run(
        [*COE, "wild", str(manifest), "--out", str(tmp_path / "out"), "--expert", "dct", "--no-progress",
         *cli_settings(trained_config)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stdout.split())
    assert "share called fake, as-is" in shown and "share called fake, matched" in shown
    assert "camera A" in shown and "gen [x]" in shown  # sources and generators as written
    report = json.loads((tmp_path / "out" / "wild.json").read_text())
    assert {(row["protocol"], row["system"]) for row in report["systems"]} == {
        (p, s) for p in ("as-is", "matched") for s in ("routed", "dct")
    }


def test_coverage_against_accuracy_keeps_the_surest_answers():
    from benchmarks.metrics import accuracy_at_coverage

    p_fake = np.array([0.99, 0.01, 0.6, 0.45, 0.9, 0.2, 0.55, 0.52, 0.05, 0.7])
    is_fake = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 1], dtype=bool)
    accuracy = accuracy_at_coverage(p_fake, is_fake)
    assert accuracy["100%"] == pytest.approx(0.7)  # 0.6, 0.45 and 0.55 wrong
    assert accuracy["20%"] == 1.0 and accuracy["40%"] == 1.0  # 0.99, 0.01, 0.05, 0.9 are all right

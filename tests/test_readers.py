"""Benchmark readers on small benchmarks written in each upstream layout, with real image files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.builtin import BuiltinBenchmarkConfig, build_builtin_benchmark, read_builtin_manifest
from benchmarks.readers import (
    READERS,
    BenchmarkFormatError,
    BenchmarkItem,
    BenchmarkSpec,
    load_benchmark_spec,
    read_benchmark,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"


def write_image(path: Path, width: int = 40, height: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (120, 30, 200)).save(path)
    return path


def write_json(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def summary(items: list[BenchmarkItem], root: Path) -> list[tuple]:
    return [(item.path.relative_to(root).as_posix(), item.label, item.split, item.generator, item.subject)
            for item in items]


def test_every_reader_format_is_registered():
    assert set(READERS) == {"folder", "manifest", "synthscars", "fakeclue", "builtin"}


# --- folder -----------------------------------------------------------------------------------


def test_folder_real_fake_skips_hidden_stray_and_non_image_files(tmp_path):
    write_image(tmp_path / "real" / "a.png")
    write_image(tmp_path / "fake" / "b.jpg")
    write_image(tmp_path / "fake" / "nested" / "c.WEBP")
    write_image(tmp_path / "fake" / ".thumb.png")
    write_image(tmp_path / ".cache" / "fake" / "d.png")
    write_image(tmp_path / "loose.png")
    (tmp_path / "real" / "notes.txt").write_text("not an image")

    items = read_benchmark(BenchmarkSpec(name="plain", reader="folder", root=tmp_path, generator="mixed"))

    assert summary(items, tmp_path) == [
        ("fake/b.jpg", "fake", "all", "mixed", "unknown"),
        ("fake/nested/c.WEBP", "fake", "all", "mixed", "unknown"),
        ("real/a.png", "real", "all", "mixed", "unknown"),
    ]
    assert items[2].entry == "real/a.png"
    assert all(item.path.is_absolute() and item.ground_truth_mask((40, 40)) is None for item in items)


def test_folder_cnndetection_layout(tmp_path):
    for relative in ("test/progan/airplane/0_real/a.png", "test/progan/airplane/1_fake/b.png",
                     "test/biggan/0_real/c.png", "test/biggan/1_fake/d.PNG"):
        write_image(tmp_path / relative)

    spec = BenchmarkSpec(name="cnndetection", reader="folder", root=tmp_path, splits=["test"])

    items = read_benchmark(spec)

    assert summary(items, tmp_path) == [
        ("test/biggan/0_real/c.png", "real", "test", "biggan", "unknown"),
        ("test/biggan/1_fake/d.PNG", "fake", "test", "biggan", "unknown"),
        ("test/progan/airplane/0_real/a.png", "real", "test", "progan/airplane", "unknown"),
        ("test/progan/airplane/1_fake/b.png", "fake", "test", "progan/airplane", "unknown"),
    ]


def test_folder_genimage_layout_and_split_filter(tmp_path):
    subset = tmp_path / "Midjourney" / "imagenet_midjourney"
    write_image(subset / "train" / "ai" / "a.png")
    write_image(subset / "train" / "nature" / "b.JPEG")
    write_image(subset / "val" / "ai" / "c.png")
    write_image(subset / "val" / "nature" / "d.JPEG")

    items = read_benchmark(BenchmarkSpec(name="genimage", reader="folder", root=tmp_path, splits=["val"]))

    assert summary(items, subset) == [
        ("val/ai/c.png", "fake", "val", "Midjourney/imagenet_midjourney", "unknown"),
        ("val/nature/d.JPEG", "real", "val", "Midjourney/imagenet_midjourney", "unknown"),
    ]


def test_folder_fakeclue_layout_names_subjects(tmp_path):
    write_image(tmp_path / "train" / "animal" / "fake" / "a.png")
    write_image(tmp_path / "test" / "human" / "real" / "b.png")
    spec = BenchmarkSpec(name="fakeclue-folders", reader="folder", root=tmp_path, folder_names="subject")

    items = read_benchmark(spec)

    assert summary(items, tmp_path) == [
        ("test/human/real/b.png", "real", "test", "unknown", "human"),
        ("train/animal/fake/a.png", "fake", "train", "unknown", "animal"),
    ]


def test_folder_nearest_class_folder_decides(tmp_path):
    write_image(tmp_path / "real" / "fake" / "a.png")

    (item,) = read_benchmark(BenchmarkSpec(name="nested", reader="folder", root=tmp_path))

    assert (item.label, item.generator) == ("fake", "real")


def test_folder_follows_symlinked_folders_without_looping(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "x.png")
    root = tmp_path / "bench"
    write_image(root / "real" / "a.png")
    (root / "fake").symlink_to(elsewhere, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)

    items = read_benchmark(BenchmarkSpec(name="linked", reader="folder", root=root))

    assert [(item.entry, item.label) for item in items] == [("fake/x.png", "fake"), ("real/a.png", "real")]


def test_folder_without_class_folders_names_the_expected_ones(tmp_path):
    write_image(tmp_path / "images" / "a.png")

    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(BenchmarkSpec(name="flat", reader="folder", root=tmp_path))

    message = str(error.value)
    assert str(tmp_path) in message
    for name in ("real", "0_real", "nature", "fake", "1_fake", "ai"):
        assert name in message


def test_folder_with_class_folders_but_no_images_is_an_empty_benchmark(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()

    with pytest.raises(BenchmarkFormatError, match="no items"):
        read_benchmark(BenchmarkSpec(name="empty", reader="folder", root=tmp_path))


def test_split_filter_that_keeps_nothing_names_the_splits_there_are(tmp_path):
    write_image(tmp_path / "train" / "real" / "a.png")

    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(BenchmarkSpec(name="only-train", reader="folder", root=tmp_path, splits=["test"]))

    assert "no items" in str(error.value) and "'train'" in str(error.value)


# --- manifest ---------------------------------------------------------------------------------


def manifest(root: Path, annotations: str = "manifest.csv", **fields) -> BenchmarkSpec:
    return BenchmarkSpec(name="listed", reader="manifest", root=root, annotations=annotations, **fields)


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return path


def test_manifest_csv_labels_fields_and_mask(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / "imgs" / name)
    truth = np.zeros((40, 40), dtype=bool)
    truth[5:15, 20:30] = True
    (tmp_path / "masks").mkdir()
    Image.fromarray(truth.astype(np.uint8) * 255).save(tmp_path / "masks" / "b.png")
    write_csv(tmp_path / "list.csv", [
        ["path", "label", "subject", "generator", "mask_path", "split", "explanation", "source"],
        ["a.png", "real", "animal", "", "", "test", "", "camera"],
        ["b.png", "1", "", "sdxl", "masks/b.png", "train", "The fur melts.", "x"],
        ["c.png", "0", "", "", "", "", "", ""],
    ])
    a, b, c = read_benchmark(manifest(tmp_path, "list.csv", images="imgs", subject="scene"))

    assert (a.label, a.subject, a.generator, a.split) == ("real", "animal", "unknown", "test")
    assert (b.label, b.subject, b.generator, b.split) == ("fake", "scene", "sdxl", "train")
    assert (a.entry, b.explanation) == ("list.csv line 2", "The fur melts.")
    assert (c.label, c.split, c.mask_path, c.explanation) == ("real", "all", None, None)
    assert b.path == tmp_path / "imgs" / "b.png" and b.mask_path == tmp_path / "masks" / "b.png"
    assert np.array_equal(b.ground_truth_mask((40, 40)), truth)
    assert np.array_equal(b.ground_truth_mask((80, 80)), np.kron(truth, np.ones((2, 2), dtype=bool)))
    assert a.ground_truth_mask((40, 40)) is None


def test_manifest_jsonl_with_blank_lines_integer_labels_and_absolute_paths(tmp_path):
    absolute = write_image(tmp_path / "elsewhere" / "x.png")
    write_image(tmp_path / "y.png")
    mask = np.zeros((40, 40, 3), dtype=np.uint8)
    mask[0, 0] = (0, 0, 1)  # a dark pure blue still marks a manipulated pixel
    Image.fromarray(mask).save(tmp_path / "y_mask.png")
    rows = [{"path": str(absolute), "label": 0, "generator": "camera"},
            {"path": "y.png", "label": 1, "mask": "y_mask.png", "split": 3}]
    (tmp_path / "list.jsonl").write_text("\n" + json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")

    x, y = read_benchmark(manifest(tmp_path, "list.jsonl"))

    assert (x.path, x.label, x.generator, x.entry) == (absolute, "real", "camera", "list.jsonl line 2")
    assert (y.label, y.split, y.entry) == ("fake", "3", "list.jsonl line 4")
    assert y.ground_truth_mask((40, 40)).sum() == 1


def test_manifest_problems_name_file_and_line(tmp_path):
    write_image(tmp_path / "ok.png")
    write_csv(tmp_path / "manifest.csv", [
        ["path", "label", "mask_path"],
        ["ok.png", "fake", ""],
        ["gone.png", "real", ""],
        ["ok.png", "maybe", ""],
        ["ok.png", "fake", "masks/gone.png"],
        ["ok.png", "", ""],
        ["ok.png", "real", "", "surplus"],
    ])

    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(manifest(tmp_path))

    message = str(error.value)
    assert "benchmark 'listed': 5 problems" in message
    assert f"manifest.csv line 3: image file not found: {tmp_path / 'gone.png'}" in message
    assert "manifest.csv line 4: unknown label 'maybe' (expected real or fake, or 0 or 1 where 1 = fake)" in (
        message
    )
    assert "manifest.csv line 5: mask file not found" in message
    assert "manifest.csv line 6: missing required field 'label'" in message
    assert "manifest.csv line 7: more fields than the header" in message


def test_manifest_without_path_column(tmp_path):
    write_csv(tmp_path / "manifest.csv", [["file", "label"], ["a.png", "real"]])

    with pytest.raises(BenchmarkFormatError, match=r"manifest\.csv line 1: missing required column path"):
        read_benchmark(manifest(tmp_path))


def test_manifest_bad_csv_and_truncated_jsonl_name_the_line(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "quoted.csv").write_text('path,label\na.png,real\n"a.png,fake\n')
    (tmp_path / "cut.jsonl").write_text('{"path": "a.png", "label": "real"}\n{"path": "a.png", "label": "re')

    with pytest.raises(BenchmarkFormatError, match=r"quoted\.csv line \d+: bad CSV"):
        read_benchmark(manifest(tmp_path, "quoted.csv"))
    with pytest.raises(BenchmarkFormatError, match=r"cut\.jsonl line 2: bad JSON"):
        read_benchmark(manifest(tmp_path, "cut.jsonl"))


def test_many_problems_list_the_first_twenty_and_count_the_rest(tmp_path):
    rows = [[f"missing{i}.png", "real"] for i in range(25)]
    write_csv(tmp_path / "manifest.csv", [["path", "label"], *rows])

    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(manifest(tmp_path))

    message = str(error.value)
    assert "25 problems" in message and "... and 5 more" in message
    assert "manifest.csv line 21:" in message and "manifest.csv line 22:" not in message
    assert len(error.value.problems) == 25


# --- builtin ----------------------------------------------------------------------------------


def test_builtin_reads_the_built_in_benchmark(tmp_path):
    folder = tmp_path / "builtin"
    build_builtin_benchmark(folder, BuiltinBenchmarkConfig(n_real=6, fakes_per_generator=3, image_size=32, generators=["inpaint_local"]))
    rows = read_builtin_manifest(folder, "test")

    items = read_benchmark(BenchmarkSpec(name="builtin", reader="builtin", root=folder, splits=["test"]))

    expected = sorted((str(folder / r["path"]), r["label"], r["generator"], r["subject"]) for r in rows)
    assert [(str(item.path), item.label, item.generator, item.subject) for item in items] == expected
    masked = [item for item in items if item.mask_path is not None]
    assert masked and all(item.ground_truth_mask((32, 32)).any() for item in masked)


def test_builtin_without_root_says_coe_fills_it_in():
    with pytest.raises(BenchmarkFormatError, match="needs `root`"):
        read_benchmark(BenchmarkSpec(name="builtin", reader="builtin"))


# --- SynthScars -------------------------------------------------------------------------------


def synthscars_root(tmp_path: Path, entries: list) -> Path:
    """LEGION's layout: <split>/images/ and <split>/annotations/<split>.json."""
    root = tmp_path / "SynthScars" / "test"
    write_image(root / "images" / "a.png", width=60, height=40)
    write_image(root / "images" / "b.jpg")
    write_json(root / "annotations" / "test.json", entries)
    return root


def synthscars_spec(root: Path) -> BenchmarkSpec:
    return BenchmarkSpec(
        name="synthscars",
        reader="synthscars",
        root=root,
        annotations="annotations/test.json",
        images="images",
    )


CAPTION = ('"Upon examining the image. I have found: A bun with odd seeds.\\nTo elaborate, I have found the '
           'following artifacts. Top of the bun:The seeds are too large."')


def test_synthscars_items_masks_and_explanations(tmp_path):
    root = synthscars_root(tmp_path, [
        {"12": {"img_file_name": "a.png", "caption": "ignored: every ref has an explanation", "refs": [
            {"sentence": "Cat's left ear", "explanation": "It bends backwards.", "bbox": None,
             "segmentation": [[5, 10, 30, 10, 30, 15, 5, 15]]},
            {"sentence": "The tail", "explanation": "It fuses with the sofa.", "bbox": None,
             "segmentation": [[40.0, 20.0, 50.0, 20.0, 50.0, 30.0, 40.0, 30.0]]},
        ]}},
        {"7": {"img_file_name": "b.jpg", "caption": json.loads(CAPTION), "refs": [
            {"sentence": "Top of the bun", "bbox": None, "segmentation": [[1, 1, 4, 1, 4, 4]]},
        ]}},
    ])

    a, b = read_benchmark(synthscars_spec(root))

    assert [(item.label, item.split, item.subject) for item in (a, b)] == [("fake", "test", "unknown")] * 2
    assert a.path == root / "images" / "a.png" and a.entry == "annotations/test.json entry 0 (id 12)"
    assert a.explanation == "Cat's left ear: It bends backwards.\nThe tail: It fuses with the sofa."
    assert b.explanation == json.loads(CAPTION).strip('"')
    expected = np.zeros((40, 60), dtype=bool)
    expected[10:16, 5:31] = True
    expected[20:31, 40:51] = True
    assert np.array_equal(a.ground_truth_mask((40, 60)), expected)


def test_synthscars_problems_name_file_entry_and_id(tmp_path):
    root = synthscars_root(tmp_path, [
        {"12": {"img_file_name": "a.png", "caption": "", "refs": []}},
        {"7": {"img_file_name": "b.jpg", "caption": "", "refs": [
            {"sentence": "s", "segmentation": [[1, 2, 3, 4, 5, 6, 7]]},
            {"sentence": "t", "segmentation": [[1, 2, 3, 4]]},
        ]}},
        {"9": {"img_file_name": "gone.png", "caption": "", "refs": []}},
        {"3": {"caption": "", "refs": []}},
    ])

    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(synthscars_spec(root))

    problems = error.value.problems
    file = "annotations/test.json"
    assert f"{file} entry 1 (id 7): ref 0 polygon 0: polygon with an odd number of coordinates (7)" in (
        problems
    )
    assert f"{file} entry 1 (id 7): ref 1 polygon 0: polygon with fewer than 3 points (2)" in problems
    assert any(p.startswith(f"{file} entry 2 (id 9): image file not found") for p in problems)
    assert f"{file} entry 3 (id 3): missing required field 'img_file_name'" in problems
    assert len(problems) == 4


def test_synthscars_truncated_json_names_the_file_and_position(tmp_path):
    root = synthscars_root(tmp_path, [])
    (root / "annotations" / "test.json").write_text('[{"12": {"img_file_name": "a.png", "refs": [')

    with pytest.raises(BenchmarkFormatError, match=r"annotations/test\.json line 1 column \d+: bad JSON"):
        read_benchmark(synthscars_spec(root))


# --- FakeClue ---------------------------------------------------------------------------------


def fakeclue_entry(image: str, label, cate: str, answer: str) -> dict:
    return {"image": image, "label": label, "cate": cate, "conversations": [
        {"from": "human", "value": "<image>Does the image looks real/fake?"},
        {"from": "gpt", "value": answer},
    ]}


def fakeclue_spec(root: Path) -> BenchmarkSpec:
    return BenchmarkSpec(name="fakeclue", reader="fakeclue", root=root, annotations="data_json/test.json",
                         images="test")


def test_fakeclue_label_one_is_real(tmp_path):
    write_image(tmp_path / "test" / "animal" / "fake" / "a.png")
    write_image(tmp_path / "test" / "doc" / "real" / "b.png")
    write_json(tmp_path / "data_json" / "test.json", [
        fakeclue_entry("animal/fake/a.png", 0, "animal", "This is a fake image. The fur has no strands."),
        fakeclue_entry("doc/real/b.png", 1, "doc", "This is a real image. The print is even."),
    ])

    a, b = read_benchmark(fakeclue_spec(tmp_path))

    assert a.path == tmp_path / "test" / "animal" / "fake" / "a.png"
    assert (a.label, a.subject, a.split) == ("fake", "animal", "test")
    assert (b.label, b.subject, b.entry) == ("real", "document", "data_json/test.json entry 1")
    assert a.explanation == "This is a fake image. The fur has no strands."


def test_fakeclue_problems_name_file_and_entry(tmp_path):
    write_image(tmp_path / "test" / "human" / "real" / "a.png")
    write_json(tmp_path / "data_json" / "test.json", [
        fakeclue_entry("human/real/a.png", 1, "human", "This is a real image."),
        fakeclue_entry("human/real/a.png", 2, "human", ""),
        fakeclue_entry("human/real/gone.png", 0, "human", ""),
        {"image": "human/real/a.png", "cate": "human"},
    ])

    with pytest.raises(BenchmarkFormatError) as error:
        read_benchmark(fakeclue_spec(tmp_path))

    message = str(error.value)
    assert "data_json/test.json entry 1: unknown label 2 (FakeClue: 1 = real, 0 = fake)" in message
    assert "data_json/test.json entry 2: image file not found" in message
    assert "data_json/test.json entry 3: missing required field 'label'" in message


# --- definitions ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_definition_loads(path):
    spec = load_benchmark_spec(path)
    assert spec.root is None or spec.root.is_absolute()


def test_shipped_definitions_include_builtin_and_the_four_formats():
    assert load_benchmark_spec(CONFIGS / "builtin.yaml").splits == ["router_train", "test"]
    readers = {load_benchmark_spec(path).reader for path in (CONFIGS / "examples").glob("*.yaml")}
    assert readers == {"folder", "manifest", "synthscars", "fakeclue"}


def test_relative_root_is_taken_from_the_definition_folder(tmp_path):
    (tmp_path / "defs").mkdir()
    definition = tmp_path / "defs" / "mine.yaml"
    definition.write_text("name: mine\nreader: folder\nroot: ../data\n")

    assert load_benchmark_spec(definition).root == tmp_path / "data"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nreader: folder\nroot: /d\nroots: /e\n", "bad.yaml: roots: unknown key"),
        ("name: x\nreader: manifest\nroot: /d\n", "needs `annotations`"),
        ("name: x\nreader: csv\nroot: /d\n", "bad.yaml: reader: Input should be 'folder'"),
        ("name: X Y\nreader: folder\nroot: /d\n", "bad.yaml: name: String should match pattern"),
        ("name: x\nreader: [folder\n", "line 3: not valid YAML"),
        ("- a list\n", "expected a mapping"),
        ("", "empty file: expected a mapping of keys (BenchmarkSpec)"),
    ],
)
def test_bad_definitions_name_the_file_and_key(tmp_path, text, expected):
    definition = tmp_path / "bad.yaml"
    definition.write_text(text)

    with pytest.raises(BenchmarkFormatError) as error:
        load_benchmark_spec(definition)

    assert str(definition) in str(error.value) and expected in str(error.value)


def test_items_are_frozen_and_reject_relative_paths(tmp_path):
    item = BenchmarkItem(path=write_image(tmp_path / "a.png"), label="real", entry="a.png")
    with pytest.raises(ValueError):
        item.label = "fake"
    with pytest.raises(ValueError, match="absolute"):
        BenchmarkItem(path=Path("a.png"), label="real", entry="a.png")

"""The run report of `coe route` (report.html), in a real headless Chromium: it loads cleanly from
disk, filters, sorts, pages and toggles masks, and shows every text from files and models as text."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from coe.core.masks import save_masks
from coe.core.records import (
    Artifact, ErrorCode, ErrorInfo, ExpertOutput, ImageRecord, Localization, RankedExpert, RoutingDecision, Verdict,
)
from coe.core.thumbnails import THUMBNAIL_SIDE, thumbnail_file, write_thumbnail
from coe.pipeline import route
from coe.reports.run_report import CHUNK_ROWS, DATA_DIR, write_run_report
from coe.results import REPORT_FILE, RESULTS_JSONL, summarize
from photos import write_photos

HOSTILE_NAME = '<img src=x onerror="window.injected=1;alert(1)">.png'
HOSTILE_TEXT = '</script><script>window.injected=2;alert(2)</script><b onmouseover=alert(3)>bold?</b>'


def verdict_for(path: Path, label: str, p_fake: float, expert: str, subject: str | None, run_dir: Path,
                artifacts: list[tuple[str, str, np.ndarray]] = (), explanation: str | None = None) -> Verdict:
    """A verdict as the pipeline makes it, for a real image file: its thumbnail and mask files written."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    image_id = hashlib.sha256(path.name.encode()).hexdigest()
    write_thumbnail(pixels, run_dir, image_id)
    output = ExpertOutput(expert=expert, p_fake=p_fake, label="fake" if p_fake >= 0.5 else "real",
                          explanation=explanation)
    localization = None
    if artifacts:
        localization = Localization(
            expert="legion", explanation="what legion saw",
            artifacts=[Artifact(category=category, phrase=phrase).with_mask(mask) for category, phrase, mask in artifacts],
        )
        save_masks(localization, run_dir, image_id[:16])
    routing = RoutingDecision(
        router_id="query-test/v1", level="subject" if subject else "query", subject=subject, chosen=expert,
        ranked=[RankedExpert(expert=expert, p_correct=0.9, cost=1.0, utility=0.9),
                RankedExpert(expert="other", p_correct=0.6, cost=2.0, utility=0.6)],
        reason=f"routed to {expert}",
    )
    return Verdict(
        path=str(path), image_id=image_id, label=label, p_fake=p_fake, decided_by=expert, reason=f"{label}: {expert}",
        explanation=explanation, expert_outputs=[output], localization=localization, routing=routing,
        image=ImageRecord(id=image_id, path=str(path), width=pixels.shape[1], height=pixels.shape[0], format="PNG",
                          mode="RGB", size_bytes=path.stat().st_size),
    )


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, list[Verdict]]:
    """Six real pictures (one with a hostile file name and explanation, two with masks), two
    unreadable files, one duplicate: the report of them."""
    run_dir = tmp_path_factory.mktemp("run")
    photos = write_photos(run_dir.parent / f"{run_dir.name}-in", [
        ("astronaut.png", data.astronaut(), (256, 256)), ("chelsea.png", data.chelsea(), None),
        ("coffee.png", data.coffee(), (300, 200)), (HOSTILE_NAME, data.rocket(), (200, 300)),
        ("camera.png", np.stack([data.camera()] * 3, axis=-1), (128, 128)), ("horse.png", np.stack([data.horse() * 255] * 3, axis=-1).astype(np.uint8), (160, 100)),
    ])
    astronaut, chelsea, coffee, hostile, camera, horse = photos
    verdicts = [
        verdict_for(astronaut, "fake", 0.91, "dct", "people", run_dir, artifacts=[
            ("structure", "the face", disc((256, 256), (70, 120), 40)),
            ("physics", "the flag's shadow", disc((256, 256), (200, 40), 30)),
        ], explanation="the skin is too smooth"),
        verdict_for(chelsea, "real", 0.08, "spectrum", "animals", run_dir),
        verdict_for(coffee, "uncertain", 0.52, "residual", "objects", run_dir),
        verdict_for(hostile, "fake", 0.77, "dct", "objects", run_dir, artifacts=[
            ("other", HOSTILE_TEXT, disc((300, 200), (150, 100), 50)),
        ], explanation=HOSTILE_TEXT),
        verdict_for(camera, "real", 0.2, "spectrum", "people", run_dir),
        verdict_for(horse, "fake", 0.66, "residual", "animals", run_dir),
    ]
    duplicate = verdicts[1].model_copy(update={"path": str(chelsea) + ".copy.png", "duplicate_of": str(chelsea)})
    broken = [
        Verdict(path="/data/broken.jpg", error=ErrorInfo(code=ErrorCode.TRUNCATED, message="the file ends early")),
        Verdict(path=f"/data/{HOSTILE_NAME}", error=ErrorInfo(code=ErrorCode.NOT_AN_IMAGE, message=HOSTILE_TEXT)),
    ]
    verdicts = [*verdicts[:3], broken[0], duplicate, *verdicts[3:], broken[1]]
    write_run_report(run_dir, verdicts, summarize(verdicts, run_dir, seconds=3.0, setup_seconds=1.0, done_before=0, embedded=6))
    return run_dir, verdicts


def open_report(page, run_dir: Path):
    page.goto((run_dir / REPORT_FILE).as_uri())
    page.wait_for_selector("#gallery[data-ready]", state="attached")
    return page


def cards(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#gallery article.card",
        "nodes => nodes.map(n => ({label: n.dataset.label, row: Number(n.dataset.row),"
        " path: n.querySelector('.path').textContent, p: n.querySelector('.p').textContent}))",
    )


def choose(page, select: str, option_text: str) -> None:
    """Pick an option and wait until the gallery shows the result."""
    before = page.eval_on_selector("#gallery", "n => n.dataset.ready")
    page.select_option(select, label=option_text)
    page.wait_for_function("(before) => document.querySelector('#gallery').dataset.ready !== before", arg=before)


@pytest.mark.browser
def test_report_loads_cleanly_and_shows_the_summary_and_every_row(page, small_run, tmp_path):
    run_dir, verdicts = small_run
    open_report(page, run_dir)
    assert page.events.problems() == []
    stats = {s: page.text_content(f'[data-stat="{s}"] .value') for s in ("real", "fake", "uncertain", "errors")}
    assert stats == {"real": "3", "fake": "3", "uncertain": "1", "errors": "2"}  # the duplicate counts as real
    assert len(cards(page)) == len(verdicts)
    assert page.text_content("#matching") == f"showing 1–{len(verdicts)} of {len(verdicts)} matching (of {len(verdicts)})"
    # Every thumbnail and overlay loads from the run folder (scrolled into view: they load lazily).
    for image in page.query_selector_all("#gallery img"):
        image.scroll_into_view_if_needed()
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector_all("#gallery img.thumb", "n => n.length") == 7  # 6 images and the duplicate
    assert page.eval_on_selector("#p-fake-histogram img", "i => i.complete && i.naturalWidth") > 0
    errors = page.eval_on_selector_all("#error-list tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert [(e[1], e[2]) for e in errors] == [("/data/broken.jpg", "truncated"), (f"/data/{HOSTILE_NAME}", "not_an_image")]
    # Self-contained: everything the page asked for is a file in the run folder.
    assert page.events.requests and all(url.startswith(run_dir.as_uri() + "/") for url in page.events.requests)
    screenshot = page.screenshot(path=tmp_path / "report.png", full_page=True)
    assert screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(screenshot) > 50_000


@pytest.mark.browser
def test_text_from_file_names_explanations_and_models_renders_as_text(page, small_run):
    run_dir, _ = small_run
    open_report(page, run_dir)
    for image in page.query_selector_all("#gallery img"):
        image.scroll_into_view_if_needed()
    page.mouse.move(300, 300)
    assert page.evaluate("window.injected") is None
    assert page.events.dialogs == [] and page.events.problems() == []
    assert page.query_selector_all("img[src=x]") == [] and page.query_selector_all("b[onmouseover]") == []
    shown = page.inner_text("body")
    assert HOSTILE_NAME in shown and HOSTILE_TEXT in shown


@pytest.mark.browser
def test_filters_by_label_expert_subject_and_error(page, small_run):
    run_dir, _ = small_run
    open_report(page, run_dir)
    choose(page, "#filter-label", "fake")
    assert {c["label"] for c in cards(page)} == {"fake"} and len(cards(page)) == 3
    choose(page, "#filter-expert", "dct")
    assert [Path(c["path"]).name for c in cards(page)] == ["astronaut.png", HOSTILE_NAME]
    choose(page, "#filter-subject", "objects")
    assert [Path(c["path"]).name for c in cards(page)] == [HOSTILE_NAME]
    choose(page, "#filter-label", "error")
    assert cards(page) == [] and page.text_content("#matching") == "no row matches (of 9)"
    choose(page, "#filter-expert", "all")
    choose(page, "#filter-subject", "all")
    assert [c["label"] for c in cards(page)] == ["error", "error"]
    choose(page, "#filter-error", "truncated")
    assert [c["path"] for c in cards(page)] == ["/data/broken.jpg"]
    choose(page, "#filter-label", "all")
    choose(page, "#filter-error", "no error")
    assert len(cards(page)) == 7 and "error" not in {c["label"] for c in cards(page)}
    assert page.events.problems() == []


@pytest.mark.browser
def test_sorting_by_p_fake_puts_errors_last(page, small_run):
    run_dir, verdicts = small_run
    open_report(page, run_dir)
    choose(page, "#sort", "p_fake, highest first")
    shown = [c["p"].removeprefix("p_fake ") for c in cards(page)]
    scores = sorted((v.p_fake for v in verdicts if v.p_fake is not None), reverse=True)
    assert shown == [f"{p:.3f}" for p in scores] + ["–", "–"]
    choose(page, "#sort", "p_fake, lowest first")
    shown = [c["p"].removeprefix("p_fake ") for c in cards(page)]
    assert shown == [f"{p:.3f}" for p in sorted(scores)] + ["–", "–"]


@pytest.mark.browser
def test_mask_toggles_per_phrase_per_image_and_for_the_page(page, small_run):
    run_dir, _ = small_run
    open_report(page, run_dir)
    astronaut = page.locator("article.card", has_text="astronaut.png")
    overlays = astronaut.locator("img.overlay")
    phrases = astronaut.locator(".artifacts li")
    assert phrases.all_inner_texts() == ["structure: the face (legion)", "physics: the flag's shadow (legion)"]
    assert astronaut.locator("a.path").get_attribute("href") == (run_dir.parent / f"{run_dir.name}-in" / "astronaut.png").as_uri()
    assert overlays.count() == 2 and all(overlays.nth(i).is_visible() for i in range(2))

    astronaut.locator("input.toggle-mask").nth(0).uncheck()  # one phrase
    assert [overlays.nth(i).is_visible() for i in range(2)] == [False, True]
    astronaut.locator("input.toggle-masks").uncheck()  # the whole image
    assert [overlays.nth(i).is_visible() for i in range(2)] == [False, False]
    astronaut.locator("input.toggle-masks").check()
    assert [overlays.nth(i).is_visible() for i in range(2)] == [True, True]

    page.uncheck("#show-masks")  # every image on the page
    assert page.locator("#gallery img.overlay:visible").count() == 0
    page.check("#show-masks")
    assert page.locator("#gallery img.overlay:visible").count() == 3

    # The overlay is the mask: coloured where the mask is, transparent elsewhere, at thumbnail size.
    src = overlays.nth(0).get_attribute("src")
    with Image.open(run_dir / src) as overlay:
        assert overlay.mode == "RGBA" and max(overlay.size) == THUMBNAIL_SIDE
        alpha = np.asarray(overlay)[..., 3] > 0
    face = disc((256, 256), (70, 120), 40)
    assert alpha[70, 120] and not alpha[200, 200] and abs(alpha.sum() - face.sum()) < 0.1 * face.sum()
    assert page.events.problems() == []


def test_a_route_run_writes_the_report_and_each_thumbnail_once(tmp_path, trained_config):
    photos = write_photos(tmp_path / "in", [
        ("astronaut.jpg", data.astronaut(), (200, 200)), ("coffee.png", data.coffee(), (300, 200)),
    ])
    (tmp_path / "in" / "copy.jpg").write_bytes(photos[0].read_bytes())
    (tmp_path / "in" / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    route(trained_config, [tmp_path / "in"], out, show_progress=False)
    rows = [json.loads(line) for line in (out / RESULTS_JSONL).read_text().splitlines()]
    thumbnails = {row["image_id"]: out / thumbnail_file(row["image_id"]) for row in rows if row["image_id"]}
    assert len(thumbnails) == 2 and all(path.is_file() for path in thumbnails.values())
    with Image.open(thumbnails[rows[0]["image_id"]]) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) <= THUMBNAIL_SIDE
    written = {path: path.stat().st_mtime_ns for path in thumbnails.values()}
    html = (out / REPORT_FILE).read_text()
    assert "coe route: 4 paths" in html
    assert all(f"<td>{stage}</td>" in html for stage in ("decoding", "CLIP features", "routing", "experts"))

    (tmp_path / "in" / "more.png").write_bytes(photos[1].read_bytes())  # the resumed run gets a duplicate
    manifest = tmp_path / "subjects.csv"  # and a manifest naming the subject of two paths
    manifest.write_text(f"path,subject\n{photos[0]},people\n{tmp_path / 'in' / 'more.png'},food\n")
    route(trained_config, [tmp_path / "in"], out, manifests=[manifest], show_progress=False)
    assert {path: path.stat().st_mtime_ns for path in thumbnails.values()} == written
    index = (out / DATA_DIR / "index.js").read_text()
    index = json.loads(re.fullmatch(r"coeReport\.start\((.*)\);\n", index, re.S).group(1))
    assert index["n"] == 5 and index["subjects"] == ["food", "people"]
    assert sorted(index["subject"]) == [-1, -1, -1, 0, 1]


@pytest.mark.browser
def test_ten_thousand_images_keep_the_page_small_and_show_one_page_at_a_time(page, tmp_path):
    experts = ["dct", "spectrum", "residual"]
    rng = np.random.default_rng(0)
    verdicts = []
    for i in range(10_000):
        if i % 97 == 0:
            verdicts.append(Verdict(path=f"/photos/{i:05d}.jpg", error=ErrorInfo(code=ErrorCode.CORRUPT, message="bad huffman table")))
            continue
        p_fake = float(rng.random())
        label = "fake" if p_fake >= 0.65 else "real" if p_fake <= 0.35 else "uncertain"
        verdicts.append(Verdict(
            path=f"/photos/{i:05d}.jpg", image_id=f"{i:064x}", label=label, p_fake=p_fake, decided_by=experts[i % 3],
            reason=f"{label}: p_fake {p_fake:.2f} (calibrated); routed by query-lightgbm/v1: {experts[i % 3]} has the best predicted P(correct)",
            explanation=f"{experts[i % 3]} judged the image {label}",
        ))
    write_run_report(tmp_path, verdicts, summarize(verdicts, tmp_path, seconds=100.0, setup_seconds=5.0, done_before=0, embedded=0))
    assert (tmp_path / REPORT_FILE).stat().st_size < 64_000
    assert len(list((tmp_path / DATA_DIR).glob("rows-*.js"))) == -(-10_000 // CHUNK_ROWS)

    open_report(page, tmp_path)
    assert len(cards(page)) == 48
    assert page.text_content("#matching") == "showing 1–48 of 10000 matching (of 10000)"
    loaded = page.evaluate("[...document.scripts].filter(s => s.src.includes('rows-')).length")
    assert loaded == 1  # only the chunk the first page needs
    page.click("#pager-top [data-go=last]")
    # Function form: Playwright evaluates a bare expression with eval(), which the page's CSP forbids
    # whenever the first check fails and it polls (seen under load).
    page.wait_for_function("() => document.querySelector('#pager-top .where').textContent === 'page 209 of 209'")
    page.wait_for_function("() => document.querySelectorAll('#gallery article.card').length === 16")
    assert cards(page)[-1]["path"] == "/photos/09999.jpg"
    choose(page, "#filter-error", "corrupt")
    assert page.text_content("#matching") == "showing 1–48 of 104 matching (of 10000)"
    assert page.events.problems() == []


@pytest.mark.browser
def test_a_run_with_no_paths_has_a_report_too(page, tmp_path):
    write_run_report(tmp_path, [], summarize([], tmp_path, seconds=0.5, setup_seconds=0.5, done_before=0, embedded=0))
    open_report(page, tmp_path)
    assert page.text_content("#matching") == "no row matches (of 0)"
    assert page.is_visible("#errors-none") and not page.is_visible("#error-list")
    assert page.events.problems() == []

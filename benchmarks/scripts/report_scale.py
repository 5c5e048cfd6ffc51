"""How the run report scales: the sizes of report.html and of its data, and the time to write them,
for runs of growing size; with Chromium present, also the time until the first page of the gallery
is shown. Rows are synthetic but shaped like real ones (a routing reason, an explanation, three
experts' opinions, the router's ranking, one error in 97); thumbnails are not part of it (one JPEG
per distinct image, about 14 KB at 256 px).

    python -m benchmarks.scripts.report_scale --images 1000 --images 10000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from coe.core.records import ErrorCode, ErrorInfo, ExpertOutput, RankedExpert, RoutingDecision, Verdict
from coe.reports.run_report import DATA_DIR, write_run_report
from coe.results import REPORT_FILE, summarize

EXPERTS = ("dct", "spectrum", "residual")
CHROMIUM = Path("/usr/bin/chromium")


def synthetic_verdicts(n: int, seed: int = 0) -> list[Verdict]:
    rng = np.random.default_rng(seed)
    verdicts = []
    for i in range(n):
        path = f"/data/photos/batch-{i // 1000:03d}/IMG_{i:06d}.jpg"
        if i % 97 == 0:
            verdicts.append(Verdict(path=path, error=ErrorInfo(code=ErrorCode.CORRUPT, message=f"{path}: broken data stream")))
            continue
        p_fake = float(rng.random())
        label = "fake" if p_fake >= 0.65 else "real" if p_fake <= 0.35 else "uncertain"
        chosen = EXPERTS[i % len(EXPERTS)]
        ranked = [RankedExpert(expert=name, p_correct=float(rng.random()), cost=1.0 + j, utility=float(rng.random()))
                  for j, name in enumerate(EXPERTS)]
        verdicts.append(Verdict(
            path=path, image_id=f"{i:064x}", label=label, p_fake=p_fake, decided_by=chosen,
            reason=f"{label}: p_fake {p_fake:.2f} (calibrated); routed by query-lightgbm-ac8d25e1/v1: {chosen} has "
                   f"the best predicted P(correct)={ranked[0].p_correct:.2f}",
            explanation=f"{chosen} judged the image {label} (raw p_fake {p_fake:.2f}); the high-frequency spectrum "
                        "shows periodic peaks typical of upsampling layers",
            expert_outputs=[ExpertOutput(expert=chosen, p_fake=p_fake, label="fake" if p_fake >= 0.5 else "real")],
            routing=RoutingDecision(router_id="query-lightgbm-ac8d25e1/v1", level="query", ranked=ranked,
                                    chosen=chosen, reason="best predicted P(correct)"),
        ))
    return verdicts


def first_page_seconds(report: Path) -> float | None:
    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        page = browser.new_page()
        start = time.perf_counter()
        page.goto(report.as_uri())
        page.wait_for_selector("#gallery[data-ready]")
        seconds = time.perf_counter() - start
        browser.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, action="append", help="rows in a run (repeatable); default 1000 and 10000")
    sizes = parser.parse_args().images or [1000, 10000]
    table = Table(title="coe run report: size and time by run size")
    for column in ("images", "report.html", "index.js", "rows (all chunks)", "write", "first page in Chromium"):
        table.add_column(column, justify="right")
    for n in sizes:
        verdicts = synthetic_verdicts(n)
        summary = summarize(verdicts, Path("."), seconds=n / 8.0, setup_seconds=5.0, done_before=0, embedded=n)
        folder = Path(tempfile.mkdtemp(prefix="coe-report-"))
        try:
            start = time.perf_counter()
            report = write_run_report(folder, verdicts, summary)
            write_seconds = time.perf_counter() - start
            rows = sum(p.stat().st_size for p in (folder / DATA_DIR).glob("rows-*.js"))
            shown = first_page_seconds(report)
            table.add_row(
                f"{n:,}", f"{(folder / REPORT_FILE).stat().st_size / 1024:.1f} KB",
                f"{(folder / DATA_DIR / 'index.js').stat().st_size / 1024:.1f} KB", f"{rows / 1024 / 1024:.2f} MB",
                f"{write_seconds:.2f} s", "no chromium" if shown is None else f"{shown:.2f} s",
            )
        finally:
            shutil.rmtree(folder)
    Console().print(table)


if __name__ == "__main__":
    main()

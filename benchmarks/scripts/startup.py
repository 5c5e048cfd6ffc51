"""What a small run costs before and beyond its work: `python -m benchmarks.scripts.startup`.

Measured in one run, each the median of --repeats subprocess calls: a bare interpreter, `coe --help`,
importing the route pipeline, a warm `coe route` of a few images (the default models already in
COE home) with its own split into loading models and routing, and the
same run asked again once finished (answered from the ledger, no model loaded). Ratios are to the
bare interpreter's start, so that they mean the same on a faster machine. The CLIP features are
cached after the first run, as they are for a user who routes a folder again.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skimage_data

COE = [sys.executable, "-m", "coe"]


def run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, result.stderr


def median_wall(command: list[str], repeats: int) -> float:
    return statistics.median(run(command)[0] for _ in range(repeats))


def summary_seconds(stderr: str, row: str) -> float:
    """A figure of the summary table `coe route` prints, e.g. the `loading models` row."""
    match = re.search(rf"{row}\s*│\s*([0-9.]+) s", stderr)
    return float(match.group(1)) if match else float("nan")


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    base = skimage_data.astronaut()
    for index in range(count):
        Image.fromarray(np.roll(base, 11 * index, axis=1)).resize((256, 256)).save(folder / f"{index:03d}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="coe --set options (e.g. home=...)")
    args = parser.parse_args()
    settings = [item for setting in args.set for item in ("--set", setting)]
    with tempfile.TemporaryDirectory() as scratch:
        images, out = Path(scratch) / "images", Path(scratch) / "out"
        write_images(images, args.images)
        route = [*COE, "route", str(images), "--out", str(out), "--no-progress", *settings]
        run(route)  # builds the default models on first use, and warms the file cache
        bare = median_wall([sys.executable, "-c", "pass"], args.repeats)
        rows = [
            ("python -c pass", bare),
            ("coe --help", median_wall([*COE, "--help"], args.repeats)),
            ("import coe.pipeline", median_wall([sys.executable, "-c", "import coe.pipeline"], args.repeats)),
        ]
        warm = [run([*route, "--restart"]) for _ in range(args.repeats)]
        wall, stderr = sorted(warm)[len(warm) // 2]
        rows += [
            (f"warm coe route, {args.images} images", wall),
            ("  of which loading models", summary_seconds(stderr, "loading models")),
            ("  of which routing", summary_seconds(stderr, "routing")),
            ("the same, finished, asked again", median_wall(route, args.repeats)),
        ]
    width = max(len(name) for name, _ in rows)
    print(f"{'what':<{width}}  seconds  x bare start")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.2f}  {seconds / bare:11.1f}")


if __name__ == "__main__":
    main()

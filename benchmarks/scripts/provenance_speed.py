"""Milliseconds per image the provenance expert takes, on files without a C2PA manifest and with
one, measured in one run with the shipped card (its trust lists loaded once, as in `coe route`).

    python -m benchmarks.scripts.provenance_speed [FOLDER ...] [--repeat N] [--watermark]

Without a folder it makes its files: photographs (scikit-image's) as a camera JPEG with EXIF, a
PNG with AUTOMATIC1111 parameters, a plain PNG and a WebP, at 1024 px; and the same JPEG signed
with a C2PA manifest by a throwaway certificate authority (tests/support/provenance_files.py makes
them). With folders, every image file in them is read once into
memory and sorted by whether the expert found a C2PA manifest. Goals: <= 5 ms without a manifest,
<= 50 ms with one. `--watermark` times the optional watermark decoding as well.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from coe.core.yaml_files import load_yaml_model
from configs import CONFIG_DIR
from experts.base import ExpertCard, create_expert

GOALS_MS = {"without manifest": 5.0, "with manifest": 50.0}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".avif", ".heic", ".heif"}


def made_files() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image
    from skimage import data as pictures

    from tests.support import provenance_files as files

    photo = np.asarray(Image.fromarray(pictures.astronaut()).resize((1024, 1024), Image.Resampling.BICUBIC))
    camera = files.exif_bytes({0x010F: "Canon", 0x0110: "Canon EOS R5"}, {0x9003: "2024:05:01 10:00:00"})
    jpeg = files.jpeg_bytes(photo[:768], exif=camera)
    return {
        "without manifest: camera JPEG 1024x768": jpeg,
        "without manifest: PNG 1024x1024, A1111 parameters": files.png_bytes(photo, {"parameters": files.A1111_PARAMETERS}),
        "without manifest: plain PNG 1024x1024": files.png_bytes(photo),
        "without manifest: WebP 1024x1024": files.webp_bytes(photo),
        "with manifest: C2PA JPEG 1024x768": files.sign_c2pa(jpeg, "image/jpeg", files.make_authority(),
                                                             "trainedAlgorithmicMedia"),
    }


def folder_files(folders: list[Path]) -> dict[str, bytes]:
    return {str(path): path.read_bytes() for folder in folders for path in sorted(folder.rglob("*"))
            if path.is_file() and path.suffix.lower() in _IMAGE_SUFFIXES}


def milliseconds(expert, data: bytes, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        expert.inspect(data)
        times.append(1000.0 * (time.perf_counter() - started))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=30, help="reads of each file (made files; 1 for folders)")
    parser.add_argument("--watermark", action="store_true", help="also time with watermark decoding on")
    arguments = parser.parse_args(argv)
    inputs = folder_files(arguments.folders) if arguments.folders else made_files()
    repeat = arguments.repeat if not arguments.folders else 1
    card = load_yaml_model(CONFIG_DIR / "experts" / "provenance.yaml", ExpertCard)
    setups = [("shipped card", card.params)]
    if arguments.watermark:
        setups.append(("watermark on", {**card.params, "watermark": {"enabled": True}}))
    for setup, params in setups:
        started = time.perf_counter()
        expert = create_expert(card.model_copy(update={"params": params}))
        expert.inspect(next(iter(inputs.values())))  # imports c2pa and Pillow: a cost paid once per process
        print(f"\n{setup}: expert ready in {1000 * (time.perf_counter() - started):.0f} ms")
        per_kind: dict[str, list[float]] = {"without manifest": [], "with manifest": []}
        for name, data in inputs.items():
            record = expert.inspect(data)
            kind = "with manifest" if any(f.source == "c2pa" and f.validation for f in record.findings) else "without manifest"
            times = milliseconds(expert, data, repeat)
            per_kind[kind] += times
            if not arguments.folders:
                print(f"  {name:52} {statistics.median(times):7.2f} ms  ({record.grade}, {record.source})")
        for kind, times in per_kind.items():
            if times:
                verdict = "meets" if statistics.median(times) <= GOALS_MS[kind] else "misses"
                print(f"  {kind:16} median {statistics.median(times):7.2f} ms, mean {statistics.mean(times):7.2f} ms, "
                      f"max {max(times):7.2f} ms over {len(times)} reads: {verdict} the {GOALS_MS[kind]:g} ms goal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

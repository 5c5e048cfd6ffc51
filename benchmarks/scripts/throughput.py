"""Throughput of `coe route` on CPU, in images per second, against the floor every pipeline pays.

    python -m benchmarks.scripts.throughput [--images N] [--size S] [--home DIR] [--out DIR] [--set KEY=VALUE]

One run measures, over the same N distinct JPEGs (generated once from photographs that installed
packages ship, reused afterwards):

1. decode baseline: PIL open + convert RGB + resize to 224x224 (bicubic), one process. Any
   pipeline has to decode every image, so this is the floor to compare with;
2. triage: `route(..., expert=NAME)` for each configured expert, no CLIP, no router. These cheap
   hand-made experts should run close to the decode baseline;
3. full: `route(...)`: CLIP features + router + expert + merger, once on an EMPTY feature cache
   (every image is embedded) and once more with that cache warm (nothing is embedded). On CPU the
   cold run is dominated by the CLIP embedding; the warm run shows what routing costs without it.

Rates are of the routing phase only (`RunSummary.paths_per_second`: model loading excluded); the
setup seconds of each run are reported beside them. `÷ decode` divides a rate by the baseline's;
`÷ triage` divides a full rate by the triage rate of the same expert mix (the triage seconds per
image of each expert, weighted by how many images the router sent it), so what is left is the cost
of CLIP, router and merger.

Trained models live in --home (default runs/throughput/home, reused between runs; built there on
first use, timed apart from every rate). The cold run uses its own home under --out, which links
to the trained models and starts with an empty feature cache, so no one's cache is ever deleted.
The numbers go to OUT/throughput.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from coe.config import CoeConfig, ConfigError, load_config, load_expert_cards
from coe.defaults import DEFAULT_ROUTER, build_default_models
from coe.models import FEATURE_CACHE, ExpertPool, routing_features
from coe.pipeline import route
from coe.results import RunSummary
from router.artifact import has_readable_artifact, read_router_meta
from router.features import RoutingFeatures

JPEG_QUALITY = 90
BASELINE_SIZE = (224, 224)
IMAGE_MARKER = "images.json"  # beside images/, not in it: route() reads every file of the folder
COLD_HOME = "cold-home"
RESULTS_FILE = "throughput.json"


@dataclass
class Measurement:
    path: str
    images: int
    seconds: float  # the measured phase: the decode loop, or route()'s routing phase
    setup_seconds: float | None = None
    embedded: int | None = None
    experts: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


def _source_photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    return photos + [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]


def _jpeg(photo: np.ndarray, size: int, rng: np.random.Generator) -> bytes:
    """A random square crop (50-100% of the short side) scaled to size x size, maybe mirrored."""
    height, width = photo.shape[:2]
    side = rng.uniform(0.5, 1.0) * min(height, width)
    top, left = rng.uniform(0, height - side), rng.uniform(0, width - side)
    image = Image.fromarray(photo).resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def ensure_images(out: Path, n: int, size: int, seed: int) -> tuple[Path, float | None]:
    """N distinct JPEGs in OUT/images, the same bytes for the same (n, size, seed); returns the
    folder and the seconds spent generating (None when a complete earlier set was reused)."""
    folder, marker = out / "images", out / IMAGE_MARKER
    wanted = {"n": n, "size": size, "seed": seed, "quality": JPEG_QUALITY}
    names = [f"{index:05d}.jpg" for index in range(n)]
    if (
        marker.exists()
        and json.loads(marker.read_text()) == wanted
        and all((folder / name).exists() for name in names)
    ):
        return folder, None
    start = time.perf_counter()
    marker.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    photos = _source_photos()
    seen: set[str] = set()
    for index, name in enumerate(names):
        attempt = 0
        while True:  # coe skips an image whose bytes it has already seen, so every file must differ
            data = _jpeg(photos[index % len(photos)], size, np.random.default_rng([seed, index, attempt]))
            digest = hashlib.sha256(data).hexdigest()
            if digest not in seen:
                break
            attempt += 1
        seen.add(digest)
        (folder / name).write_bytes(data)
    marker.write_text(json.dumps(wanted))
    return folder, time.perf_counter() - start


def decode_baseline(folder: Path) -> Measurement:
    files = sorted(folder.glob("*.jpg"))
    for path in files:  # every measured path then reads from the page cache alike
        path.read_bytes()
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.convert("RGB").resize(BASELINE_SIZE, Image.Resampling.BICUBIC)
    return Measurement("decode+resize 224 (PIL)", len(files), time.perf_counter() - start)


def ensure_models(config: CoeConfig, extractor: RoutingFeatures, console: Console) -> float | None:
    """Build the default experts and router in the home when missing; returns the seconds spent
    (None when all were there). Refuses a router trained on other features than configured."""
    router_folder = config.router.path or config.resolve_in_home(DEFAULT_ROUTER)
    seconds = None
    if ExpertPool(config).untrained() or not has_readable_artifact(router_folder):
        console.print(f"building the default experts and router in {config.home} (once; a few minutes)")
        start = time.perf_counter()
        build_default_models(config, say=lambda message: console.print(f"  {message}"), console=console)
        seconds = time.perf_counter() - start
    trained_on = read_router_meta(router_folder).extractor_id
    if trained_on != extractor.extractor_id:
        raise SystemExit(
            f"the router in {router_folder} was trained on {trained_on}, not on the configured "
            f"{extractor.extractor_id}: give this backbone its own --home"
        )
    return seconds


def cold_cache_home(home: Path, scratch: Path) -> None:
    """Make `scratch` a home with `home`'s trained models (linked) and an empty feature cache."""
    if scratch.exists():
        shutil.rmtree(scratch)  # only links and the previous cold run's cache: ours to remove
    scratch.mkdir(parents=True)
    for entry in home.iterdir():
        if not entry.name.startswith(FEATURE_CACHE.name):
            (scratch / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())


def timed_route(
    name: str, config: CoeConfig, folder: Path, out_dir: Path, expert: str | None = None
) -> tuple[Measurement, RunSummary]:
    summary = route(config, [folder], out_dir, expert=expert, restart=True, show_progress=False)
    if summary.errors or summary.duplicates or summary.analysed != summary.paths:
        raise SystemExit(f"{name}: not every image was analysed once: {summary.model_dump_json()}")
    measurement = Measurement(
        name, summary.paths, summary.routing_seconds, summary.setup_seconds,
        summary.embedded, summary.experts,
    )
    return measurement, summary


def triage_rate(mix: dict[str, int], triage: dict[str, Measurement]) -> float:
    """Images/s of the triage runs for this mix of experts: total images over total triage seconds."""
    return sum(mix.values()) / sum(count / triage[name].images_per_second for name, count in mix.items())


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(rows: list[Measurement], baseline: float, full_vs_triage: dict[str, float], title: str) -> Table:
    table = Table(title=title)
    for column in ("path", "images/s", "÷ decode", "÷ triage", "routing s", "setup s", "embedded"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        vs_triage = full_vs_triage.get(row.path)
        table.add_row(
            row.path,
            f"{row.images_per_second:.1f}",
            f"{row.images_per_second / baseline:.3f}",
            "-" if vs_triage is None else f"{vs_triage:.3f}",
            f"{row.seconds:.1f}",
            _seconds(row.setup_seconds),
            "-" if row.embedded is None else str(row.embedded),
        )
    return table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scripts.throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=1000, help="distinct JPEGs to time (default 1000)")
    parser.add_argument("--size", type=int, default=512, help="side of each square JPEG (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated JPEGs")
    parser.add_argument(
        "--home", type=Path, default=Path("runs/throughput/home"), help="trained models, reused between runs"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/throughput"), help="images, run folders, JSON")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override as in `coe route --set`, e.g. features.backbone=ViT-S-32 (repeatable)",
    )
    args = parser.parse_args()
    if args.images < 1 or args.size < 64:
        parser.error("--images must be at least 1 and --size at least 64")
    return args


def main() -> None:
    args = parse_args()
    console = Console()
    if not console.is_terminal:
        console.width = 110  # a log file gets one line per table row
    os.environ.pop("COE_HOME", None)  # it would win over --home and send the benchmark into a user's home
    try:
        config = load_config(overrides=[*args.overrides, f"home={args.home}"])
        cold_config = load_config(overrides=[*args.overrides, f"home={args.out / COLD_HOME}"])
    except ConfigError as error:
        raise SystemExit(f"configuration error:\n{error}") from None

    machine = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "decode_workers": config.run.decode_workers,
        "chunk_size": config.run.chunk_size,
        "clip_batch_size": config.features.batch_size,
    }
    console.print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))

    folder, generate_s = ensure_images(args.out, args.images, args.size, args.seed)
    console.print(
        f"images: {args.images} JPEGs {args.size}x{args.size} q{JPEG_QUALITY} in {folder} "
        + (f"(generated in {generate_s:.1f} s)" if generate_s is not None else "(reused)")
    )

    extractor = routing_features(config, load_expert_cards(config))
    start = time.perf_counter()
    feature_dim = extractor.clip.dim  # builds the CLIP model, as the cold run does lazily when routing
    clip_build_s = time.perf_counter() - start
    build_s = ensure_models(config, extractor, console)
    console.print(
        f"models in {config.home}: " + (f"built in {build_s:.1f} s" if build_s is not None else "reused")
        + f"; features {extractor.extractor_id} (CLIP {feature_dim}-d): model built in {clip_build_s:.1f} s"
    )

    baseline = decode_baseline(folder)
    console.print(f"measured {baseline.path}: {baseline.images_per_second:.1f} images/s")
    triage: dict[str, Measurement] = {}
    for name in config.experts:
        run_dir = args.out / "route" / f"triage-{name}"
        triage[name], _ = timed_route(f"triage {name}", config, folder, run_dir, name)
        console.print(f"measured {triage[name].path}: {triage[name].images_per_second:.1f} images/s")
    cold_cache_home(config.home, cold_config.home)
    full: list[Measurement] = []
    random_weights = False
    for label in ("cold", "warm"):
        name = f"full, {label} feature cache"
        measurement, summary = timed_route(name, cold_config, folder, args.out / "route" / f"full-{label}")
        full.append(measurement)
        random_weights |= summary.random_weights
        console.print(f"measured {name}: {measurement.images_per_second:.1f} images/s")
    if full[0].embedded != args.images or full[1].embedded != 0:
        raise SystemExit(
            f"expected {args.images} images embedded cold and 0 warm, "
            f"got {full[0].embedded} and {full[1].embedded}"
        )

    full_vs_triage = {row.path: row.images_per_second / triage_rate(row.experts, triage) for row in full}
    rows = [baseline, *(triage[name] for name in config.experts), *full]
    title = (
        f"coe throughput: {args.images} JPEGs {args.size}x{args.size}, {machine['cpus_usable']} CPUs, "
        f"torch {machine['torch_threads']} threads, CLIP {config.features.backbone}"
    )
    console.print(render(rows, baseline.images_per_second, full_vs_triage, title))
    console.print(
        "÷ decode: rate / decode baseline; ÷ triage: full rate / triage rate of the same expert mix "
        f"({', '.join(f'{name} {count}' for name, count in sorted(full[0].experts.items()))}); embedded: "
        f"images CLIP embedded. Rates exclude setup (model loading), shown apart; the cold routing phase "
        f"includes building the CLIP model once ({clip_build_s:.1f} s measured apart)."
    )
    if random_weights:
        console.print(
            "[bold red]CLIP ran with RANDOM weights (no pretrained weights offline): the timing is that of "
            "the real backbone; the routing decisions rest on the forensic descriptors."
        )

    report = {
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "machine": machine,
        "extractor_id": extractor.extractor_id,
        "feature_dim": feature_dim,
        "random_weights": random_weights,
        "images_generated_seconds": generate_s,
        "models_built_seconds": build_s,
        "clip_model_build_seconds": clip_build_s,
        "runs": [
            {
                **asdict(row),
                "images_per_second": row.images_per_second,
                "vs_decode": row.images_per_second / baseline.images_per_second,
                "vs_triage": full_vs_triage.get(row.path),
            }
            for row in rows
        ],
    }
    (args.out / RESULTS_FILE).write_text(json.dumps(report, indent=2))
    console.print(f"numbers in {args.out / RESULTS_FILE}")


if __name__ == "__main__":
    main()

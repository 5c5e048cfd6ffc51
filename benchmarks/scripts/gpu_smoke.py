"""GPU smoke benchmark: the seed experts from random-weight checkpoints, timed on real photographs.

Each seed expert is loaded from a random-weight checkpoint in its upstream layout and run on real
photographs, to measure what its card only estimates (experts/sizing.py).

    python -m benchmarks.scripts.gpu_smoke [--expert NAME ...] [--size tiny|full ...] [--device auto|cpu|cuda]
                                   [--images N] [--batch-size B] [--out DIR] [--allow-cpu-full]

Defaults: every pretrained expert (fakevlm, legion, npr, univfd), size tiny, device auto (CUDA where
there is one). For each expert and size:

1. a random-weight checkpoint is written to a temporary folder, deleted afterwards (a full-size 7B
   one is ~15 GB): tests/support/random_checkpoints.py. "full" is the published architecture, so its
   figures are the real model's except where random weights change the work: they seldom end an
   answer early, so FakeVLM and LEGION generate up to their max_new_tokens, near the worst case, and
   LEGION's random answers seldom hold a [SEG], so it decodes few masks (its SAM image encoder, the
   expensive part, runs on every image all the same);
2. the expert is built from its YAML card in configs/experts, with the checkpoint's params, the device
   and the batch size asked for, and loaded as a user loads it: `create_expert(card).load(weights)`,
   timed (load s);
3. one batch warms it up; then `predict` runs on N photographs that scikit-image ships, at their own
   sizes (300x451 to 1411x1411), batch by batch, timed (images/s). LEGION localises every image
   (`gate: always`), FakeVLM writes its explanation;
4. the peak memory of steps 2-3: on CUDA torch.cuda.max_memory_allocated, its statistics reset before
   loading; on the CPU the growth of the peak resident set size (resource.getrusage), the high-water
   mark reset before loading where Linux allows it (/proc/self/clear_refs; elsewhere a row can hide
   under an earlier row's peak);
5. a sanity check: every p_fake lies in [0, 1] and every mask has its image's size; the table shows
   the p_fake range and, for a localiser, the masks per image.

A full size that will not fit is skipped with the reason: the memory its card figures give for the
dtype it runs in (experts.sizing, from the full-size footprint) against free CUDA memory or available
RAM, and the checkpoint's bytes against free disk; on the CPU, models of a billion parameters or more
run only with --allow-cpu-full. The table is printed; OUT/gpu_smoke.json holds the device, the torch
and CUDA versions and every row's figures. The exit status is 1 when a row failed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from coe.core.yaml_files import load_yaml_model
from configs import CONFIG_DIR
from experts.base import ExpertCard, Localizer, create_expert
from experts.sizing import Footprint, card_figures
from experts.weights import resolve_device, resolve_dtype
from tests.support.random_checkpoints import FULL_SIZE_DTYPES, WRITERS, Size, write_random_checkpoint

CARDS = CONFIG_DIR / "experts"
# Every pretrained family has a random-checkpoint writer (tests/test_cards.py);
# its shipped card bears its name.
SEED_EXPERTS = tuple(WRITERS)
RESULTS_FILE = "gpu_smoke.json"
# scikit-image's photographs, smallest first, so that a few images are quick ones
PHOTOS = (
    "chelsea", "coffee", "rocket", "astronaut", "immunohistochemistry", "camera", "hubble_deep_field",
    "retina",
)
# What each family must do beyond its card's defaults, so that its most expensive path runs.
EXERCISED = {"fakevlm": {"explain": True}, "legion": {"gate": "always"}}
CPU_FULL_LIMIT = 10**9  # parameters
MIB = 2**20
GIB = 2**30


class SmokeRow(BaseModel):
    expert: str
    size: Size
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    parameters: int | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    images: int = 0
    load_seconds: float | None = None
    seconds: float | None = None
    images_per_second: float | None = None
    peak_memory_mib: float | None = None
    p_fake_min: float | None = None
    p_fake_max: float | None = None
    masks_per_image: float | None = None


def photographs(n: int) -> list[np.ndarray]:
    """N photographs at their own sizes, PHOTOS over and over; grey ones as RGB."""
    import skimage.data

    pictures = []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        pictures.append(np.stack([pixels] * 3, axis=-1) if pixels.ndim == 2 else pixels)
    return [pictures[index % len(pictures)] for index in range(n)]


def read_card(name: str) -> ExpertCard:
    return load_yaml_model(CARDS / f"{name}.yaml", ExpertCard)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def available_ram() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), else free pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def why_full_size_will_not_fit(
    family: str, footprint: Footprint, device: torch.device, dtype: torch.dtype, scratch: Path,
    allow_cpu_full: bool,
) -> str | None:
    if device.type == "cpu" and footprint.parameters >= CPU_FULL_LIMIT and not allow_cpu_full:
        return f"{footprint.parameters / 1e9:.1f} B parameters on the CPU: pass --allow-cpu-full to run it"
    figures = card_figures(footprint.model_copy(update={"dtype": dtype_name(dtype)}))
    needed = figures.resources.memory_mb * MIB
    if device.type == "cuda":
        free, where = torch.cuda.mem_get_info(device)[0], "CUDA memory"
    else:
        free, where = available_ram(), "RAM"
    if needed > free:
        return f"needs ~{needed / GIB:.1f} GiB of {where} in {dtype_name(dtype)}, {free / GIB:.1f} GiB free"
    written = footprint.parameters * FULL_SIZE_DTYPES[family].itemsize
    disk_free = shutil.disk_usage(scratch).free
    if written > disk_free:
        return f"its checkpoint needs ~{written / GIB:.1f} GiB of disk, {disk_free / GIB:.1f} GiB free"
    return None


class PeakMemory:
    """The peak memory of what runs between `start()` and `peak_mib()`: CUDA's allocator peak on a
    GPU; on the CPU the growth of the process's peak resident set size."""

    def __init__(self, device: torch.device):
        self.device = device
        self.baseline = 0

    @staticmethod
    def _peak_rss() -> int:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark to the current RSS
        except OSError:
            pass
        self.baseline = self._peak_rss()

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        return (self._peak_rss() - self.baseline) / MIB


def release_memory(device: torch.device) -> None:
    """Free what earlier steps left: unreferenced tensors, CUDA's cache, and (glibc) the heap pages
    freed but kept by malloc, whose reuse would hide a row's memory from its RSS growth."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


def masks_per_image(outputs: Sequence, images: Sequence[np.ndarray]) -> float:
    """Masks per image; raises when one does not have its image's size."""
    count = 0
    for output, image in zip(outputs, images, strict=True):
        for artifact in output.artifacts:
            if artifact.mask is None or artifact.mask.shape != image.shape[:2]:
                shape = None if artifact.mask is None else artifact.mask.shape
                raise ValueError(f"a mask of shape {shape} for an image of {image.shape[:2]}")
            count += 1
    return count / len(images)


class Smoke:
    def __init__(self, args: argparse.Namespace, device: torch.device, progress: Progress):
        self.args = args
        self.device = device
        self.progress = progress
        self.images = photographs(args.images)

    def row(self, name: str, size: Size) -> SmokeRow:
        card = read_card(name)
        params = {**card.params, **EXERCISED.get(card.family, {}), "device": str(self.device)}
        if self.args.batch_size is not None:
            params["batch_size"] = self.args.batch_size
        expert = create_expert(card.model_copy(update={"params": params}))
        dtype = resolve_dtype(expert.params.dtype, self.device)
        row = SmokeRow(
            expert=name, size=size, status="ok", device=str(self.device), dtype=dtype_name(dtype),
            batch_size=expert.params.batch_size,
        )
        if size == "full":
            footprint = type(expert).full_size_footprint(expert.params)
            scratch = Path(tempfile.gettempdir())
            reason = why_full_size_will_not_fit(
                card.family, footprint, self.device, dtype, scratch, self.args.allow_cpu_full
            )
            if reason is not None:
                return row.model_copy(
                    update={"status": "skipped", "reason": reason, "parameters": footprint.parameters}
                )
        task = self.progress.add_task(f"{name} {size}: writing a random checkpoint", total=None)
        try:
            with tempfile.TemporaryDirectory(prefix=f"coe-gpu-smoke-{name}-{size}-") as folder:
                self._measure(row, card.model_copy(update={"params": params}), Path(folder), task)
        except Exception as error:  # a smoke run reports what broke and goes on with the other rows
            reason = f"{type(error).__name__}: {error}"[:500]
            row = row.model_copy(update={"status": "failed", "reason": reason})
        finally:
            release_memory(self.device)
            self.progress.remove_task(task)
        return row

    def _measure(self, row: SmokeRow, card: ExpertCard, folder: Path, task: TaskID) -> None:
        progress, images = self.progress, self.images
        checkpoint = write_random_checkpoint(card.family, folder, row.size)
        row.parameters = checkpoint.parameters
        release_memory(self.device)
        card = card.model_copy(update={"params": {**card.params, **checkpoint.params}})
        memory = PeakMemory(self.device)
        memory.start()

        progress.update(task, description=f"{row.expert} {row.size}: loading")
        started = time.perf_counter()
        expert = create_expert(card).load(checkpoint.weights)
        row.load_seconds = time.perf_counter() - started

        batch = row.batch_size
        progress.update(task, description=f"{row.expert} {row.size}: warming up")
        expert.predict(images[:batch])
        progress.update(
            task, description=f"{row.expert} {row.size}: predicting", total=len(images), completed=0
        )
        outputs, seconds = [], 0.0
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            started = time.perf_counter()
            outputs.extend(expert.predict(chunk))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds += time.perf_counter() - started
            progress.advance(task, len(chunk))
        row.peak_memory_mib = memory.peak_mib()

        p_fake = np.array([output.p_fake for output in outputs])
        if not np.all((p_fake >= 0) & (p_fake <= 1)):
            raise ValueError(f"p_fake outside [0, 1]: {p_fake}")
        row.images, row.seconds, row.images_per_second = len(images), seconds, len(images) / seconds
        row.p_fake_min, row.p_fake_max = float(p_fake.min()), float(p_fake.max())
        if isinstance(expert, Localizer):
            row.masks_per_image = masks_per_image(outputs, images)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    model = platform.processor() or platform.machine()
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cpus} CPUs, torch {torch.get_num_threads()} threads"


def _parameters(count: int | None) -> str:
    if count is None:
        return "-"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def _figure(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(rows: list[SmokeRow], title: str) -> Table:
    table = Table(title=title)
    columns = ("expert", "size", "status", "parameters", "dtype", "batch", "load s", "images/s", "peak MiB",
               "sanity / reason")
    for column in columns:
        table.add_column(column, justify="left" if column in ("expert", "size", "status", "sanity / reason")
                         else "right")
    for row in rows:
        if row.status == "ok":
            sanity = f"p_fake {row.p_fake_min:.3f}-{row.p_fake_max:.3f}"
            if row.masks_per_image is not None:
                sanity += f", {row.masks_per_image:.1f} masks/image"
        else:
            sanity = row.reason or ""
        table.add_row(
            row.expert, row.size, row.status, _parameters(row.parameters), row.dtype or "-",
            "-" if row.batch_size is None else str(row.batch_size), _figure(row.load_seconds, 2),
            _figure(row.images_per_second, 2), _figure(row.peak_memory_mib, 0), sanity,
        )
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scripts.gpu_smoke", description=__doc__.split("\n")[0]
    )
    # "extend": `--size tiny full` and `--size tiny --size full` both mean both
    parser.add_argument("--expert", action="extend", nargs="+", choices=SEED_EXPERTS,
                        help="cards in configs/experts to run (default: all four)")
    parser.add_argument("--size", action="extend", nargs="+", choices=["tiny", "full"],
                        help="checkpoint sizes (default tiny)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--images", type=int, default=8, help="photographs to time (default 8)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each card's batch size")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_smoke"), help="where gpu_smoke.json goes")
    parser.add_argument("--allow-cpu-full", action="store_true",
                        help="run full sizes of a billion parameters or more on the CPU too")
    args = parser.parse_args(argv)
    args.expert = list(dict.fromkeys(args.expert or SEED_EXPERTS))
    args.size = list(dict.fromkeys(args.size or ["tiny"]))
    if args.images < 1 or (args.batch_size is not None and args.batch_size < 1):
        parser.error("--images and --batch-size must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = 140  # a log file gets one line per table row
    device = resolve_device(args.device)
    machine = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    console.print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        smoke = Smoke(args, device, progress)
        for size in args.size:
            for name in args.expert:
                row = smoke.row(name, size)
                console.print(f"{name} {size}: {row.status}" + (f" ({row.reason})" if row.reason else ""))
                rows.append(row)
    title = f"GPU smoke: {args.images} photographs on {machine['device']}, random weights"
    console.print(render(rows, title))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        **machine,
        "images": args.images,
        "photographs": [PHOTOS[index % len(PHOTOS)] for index in range(args.images)],
        "rows": [row.model_dump() for row in rows],
    }
    (args.out / RESULTS_FILE).write_text(json.dumps(report, indent=2))
    console.print(f"numbers in {args.out / RESULTS_FILE}")
    return 1 if any(row.status == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

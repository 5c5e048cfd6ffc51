"""Load on `coe serve` against the in-process pipeline, on the same images.

    python -m benchmarks.scripts.load [--images N] [--size S] [--requests R] [--clients 1 8 32] [--home DIR]
                              [--out DIR] [--set KEY=VALUE]

Each request carries one image. At each number of concurrent clients, R requests are sent to the
served endpoint (real HTTP, Ray Serve on this machine, bound to 127.0.0.1) and R calls are made to
one in-process RoutePipeline (decode in the client's thread, analyse in the one thread that owns
the pipeline, as `coe route` runs it). Both sides first see every image once, so the feature caches are warm on both
and what is compared is routing, the experts and, for the served side, HTTP and Ray. Reported:
requests per second, p50 and p99 latency, and served / in-process ratios. JSON to OUT/load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

from benchmarks.scripts.throughput import ensure_images
from coe.config import ConfigError, load_config
from coe.core.imaging import decode_image_bytes
from coe.defaults import DEFAULT_ROUTER, build_default_models
from coe.models import ExpertPool
from coe.pipeline import RoutePipeline
from coe.serve import ServeSettings, running
from router.artifact import has_readable_artifact

RESULTS_FILE = "load.json"


def measure(call, payloads: list[tuple[str, bytes]], clients: int, n_requests: int) -> dict:
    """`n_requests` calls from `clients` threads, cycling over the payloads; every call must succeed."""
    latencies: list[float] = []

    def one(index: int) -> None:
        started = time.perf_counter()
        call(payloads[index % len(payloads)])
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n_requests)))  # list(): re-raises the first failed call
    seconds = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": n_requests,
        "seconds": seconds,
        "requests_per_second": n_requests / seconds,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
    }


def render(rows: list[dict]) -> Table:
    table = Table(title="coe serve vs in-process pipeline (one image per request, warm feature caches)")
    for column in (
        "clients",
        "served req/s",
        "in-process req/s",
        "served ÷ in-process",
        "served p50 ms",
        "served p99 ms",
        "in-process p50 ms",
        "in-process p99 ms",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        served, local = row["served"], row["in_process"]
        table.add_row(
            str(row["clients"]),
            f"{served['requests_per_second']:.1f}",
            f"{local['requests_per_second']:.1f}",
            f"{row['throughput_ratio']:.2f}",
            f"{served['p50_ms']:.0f}",
            f"{served['p99_ms']:.0f}",
            f"{local['p50_ms']:.0f}",
            f"{local['p99_ms']:.0f}",
        )
    return table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scripts.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs (default 64)")
    parser.add_argument("--size", type=int, default=256, help="side of each square JPEG (default 256)")
    parser.add_argument(
        "--requests", type=int, default=128, help="requests per number of clients (default 128)"
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients (default 1 8 32)"
    )
    parser.add_argument(
        "--home", type=Path, default=Path("runs/throughput/home"), help="trained models, reused"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/load"), help="images and JSON")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override as in `coe route --set` (repeatable)",
    )
    args = parser.parse_args()
    if args.images < 1 or args.size < 64 or args.requests < 1 or min(args.clients) < 1:
        parser.error("--images, --requests and --clients must be at least 1, --size at least 64")
    return args


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    args = parse_args()
    console = Console()
    os.environ.pop("COE_HOME", None)  # it would win over --home
    try:
        config = load_config(overrides=[*args.overrides, f"home={args.home}"])
    except ConfigError as error:
        raise SystemExit(f"configuration error:\n{error}") from None
    if ExpertPool(config).untrained() or not has_readable_artifact(config.resolve_in_home(DEFAULT_ROUTER)):
        console.print(f"building the default models in {args.home} once")
        build_default_models(config)
    folder, _ = ensure_images(args.out, args.images, args.size, seed=0)
    payloads = [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.jpg"))]

    # One thread owns the in-process pipeline: its feature cache's SQLite connection belongs to the
    # thread that opened it, and one pipeline at a time is what `coe route` runs.
    pipeline_thread = ThreadPoolExecutor(1)
    pipeline = pipeline_thread.submit(RoutePipeline, config, say=console.print).result()

    def in_process(payload: tuple[str, bytes]) -> None:
        name, data = payload
        image = decode_image_bytes(data, name, config.ingest)
        verdict = pipeline_thread.submit(pipeline.analyse, [(name, image)]).result()[0]
        if verdict.error is not None:
            raise RuntimeError(f"{name}: {verdict.error.message}")

    session = threading.local()
    settings = ServeSettings(port=free_port())
    rows = []
    with running(config, settings, say=console.print) as url:

        def served(payload: tuple[str, bytes]) -> None:
            if getattr(session, "http", None) is None:
                session.http = requests.Session()
            response = session.http.post(
                f"{url}/v1/analyze", files=[("files", payload)], params={"masks": "none"}, timeout=300
            )
            response.raise_for_status()
            verdict = response.json()["verdicts"][0]
            if verdict["error"] is not None:
                raise RuntimeError(f"{payload[0]}: {verdict['error']['message']}")

        for call in (in_process, served):  # warm both feature caches, and the replicas
            measure(call, payloads, 4, len(payloads))
        for clients in args.clients:
            row = {
                "clients": clients,
                "served": measure(served, payloads, clients, args.requests),
                "in_process": measure(in_process, payloads, clients, args.requests),
            }
            row["throughput_ratio"] = (
                row["served"]["requests_per_second"] / row["in_process"]["requests_per_second"]
            )
            rows.append(row)
    pipeline_thread.submit(pipeline.close).result()
    pipeline_thread.shutdown()

    console.print(render(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"images": len(payloads), "size": args.size, "cpus": os.cpu_count(), "runs": rows}
    (args.out / RESULTS_FILE).write_text(json.dumps(report, indent=2))
    console.print(f"written: {args.out / RESULTS_FILE}")


if __name__ == "__main__":
    main()

"""`coe route --ray`: the same chunks, analysed by Ray actors, each holding its own pipeline (its
experts, router and feature extractor loaded once). The driver keeps the ledger, the progress bar and
the result files, so a Ray run resumes, reports duplicates and writes results as a local run does.

The workers decode the input paths and write masks under the run folder themselves: on a cluster,
the inputs and --out must be on a file system every node sees."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from coe.config import CoeConfig, load_expert_card
from coe.core.records import Verdict
from coe.ingest import IngestItem
from coe.ledger import Ledger
from coe.pipeline import RoutePipeline, analyse_chunk

log = logging.getLogger(__name__)


class RouteWorker:
    """One Ray actor: a pipeline and its decoding threads."""

    def __init__(self, config: CoeConfig, expert: str | None, run_dir: Path):
        self.config = config
        self.pipeline = RoutePipeline(config, expert, say=log.warning, run_dir=run_dir)
        self.decoders = ThreadPoolExecutor(config.run.decode_workers)

    def identity(self) -> dict:
        return self.pipeline.identity

    def analyse(self, chunk: Sequence[IngestItem]) -> list[Verdict]:
        return analyse_chunk(chunk, self.pipeline, {}, self.decoders, self.config)

    def n_embedded(self) -> int:
        return self.pipeline.routing.n_embedded


def start_ray(address: str) -> None:
    """`local` starts a one-machine cluster bound to 127.0.0.1; anything else joins a running one."""
    import ray

    # Never join a cluster by accident (RAY_ADDRESS, a stale session): only the one asked for.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    if ray.is_initialized():
        return
    if address == "local":
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)


def gpus_per_worker(config: CoeConfig, cluster_gpus: float, say: Callable[[str], None]) -> float:
    """What the experts' cards ask for together, where the cluster has GPUs; none, with a warning,
    where it has none (a GPU request would never be scheduled and the run would hang)."""
    names = [*config.experts, *([config.localize.expert] if config.localize.expert else [])]
    wanted = sum(load_expert_card(config, name).resources.num_gpus for name in names)
    if wanted and not cluster_gpus:
        say(f"the experts' cards ask for {wanted:g} GPU per worker but the Ray cluster has none: running on CPUs")
        return 0.0
    return wanted


class RayChunks:
    """Chunks analysed by `config.run.ray_workers` actors, results in input order."""

    def __init__(self, config: CoeConfig, expert: str | None, run_dir: Path, address: str, say: Callable[[str], None]):
        import ray

        start_ray(address)
        options = {
            "num_cpus": config.run.ray_worker_cpus,
            "num_gpus": gpus_per_worker(config, ray.cluster_resources().get("GPU", 0), say),
        }
        worker = ray.remote(RouteWorker).options(**options)
        # The first worker sets up alone: on first use it builds the default models, which the
        # others then load instead of building them again side by side.
        first = worker.remote(config, expert, run_dir)
        self.identity = ray.get(first.identity.remote())
        self.workers = [first, *(worker.remote(config, expert, run_dir) for _ in range(config.run.ray_workers - 1))]

    def analyse(self, chunks: Sequence[Sequence[IngestItem]], ledger: Ledger) -> Iterator[list[Verdict]]:
        from ray.util import ActorPool

        yield from ActorPool(self.workers).map(lambda worker, chunk: worker.analyse.remote(chunk), chunks)

    def n_embedded(self) -> int:
        import ray

        return sum(ray.get([worker.n_embedded.remote() for worker in self.workers]))

    def close(self) -> None:
        import ray

        for worker in self.workers:
            ray.kill(worker)

"""`coe route --ray`: the same chunks, analysed by Ray actors, each holding its own pipeline (its
experts, router and feature extractor loaded once). The driver keeps the ledger, the progress bar and
the result files, so a Ray run resumes, reports duplicates and writes results as a local run does.

The workers decode the input paths and write masks under the run folder themselves: on a cluster,
the inputs and --out must be on a file system every node sees."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
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
        self.pipeline = RoutePipeline(config, expert, say=log.warning, run_dir=run_dir)
        self.decoders = ThreadPoolExecutor(config.run.decode_workers)

    def identity(self) -> dict:
        return self.pipeline.identity

    def analyse(self, chunk: Sequence[IngestItem]) -> list[Verdict]:
        return analyse_chunk(chunk, self.pipeline, {}, self.decoders)

    def n_embedded(self) -> int:
        return self.pipeline.routing.n_embedded


@contextmanager
def ray_session(address: str, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block. `local` starts a one-machine cluster whose every port
    listens on loopback only, its session files in a temporary folder that is removed once the
    cluster has shut down; any other address joins a running cluster, exposed as its owner started
    it. Ray that this process had already initialised is used as it is and left running."""
    import ray

    # Never join a cluster by accident (RAY_ADDRESS, a stale session): only the one asked for.
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    if ray.is_initialized():
        yield
        return
    if address != "local":
        ray.init(address=address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    temp_dir = tempfile.mkdtemp(prefix="coe-ray-")
    try:
        _init_loopback_cluster(temp_dir, num_cpus)
        try:
            yield
        finally:
            ray.shutdown(wait_for_processes=True)
    finally:
        shutil.rmtree(temp_dir)


def _init_loopback_cluster(temp_dir: str, num_cpus: int | None) -> None:
    import ray
    from ray._private import ray_constants

    # On Linux ray.init swaps a loopback node address for the machine's routable one
    # (services.resolve_ip_for_localhost), and a node whose address is not loopback has its GCS,
    # raylet, workers and agents listen on every interface. Ray keeps the node on loopback where
    # multi-node clusters are off: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray reads once, when
    # it is imported, into this flag. The node's processes take the address from the driver.
    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp_dir,
            include_dashboard=False,
            log_to_driver=False,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node


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

        self.session = ExitStack()  # closed by close(), once the workers are gone
        self.session.enter_context(ray_session(address))
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
        self.session.close()

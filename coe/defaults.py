"""The default models: built once, on first use or by `coe demo`, through the same routine a user
follows to retrain — built-in benchmark -> experts -> `coe bench run` -> `coe router train`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from benchmarks.builtin import BuiltinBenchmarkConfig
from benchmarks.outcomes import SplitSpec
from coe.bench import bench_run, ensure_builtin_benchmark, train_untrained_experts
from coe.config import CoeConfig
from coe.core.console import plain_console
from coe.models import ExpertPool
from coe.routing import train_router_from_outcomes
from router.artifact import has_readable_artifact, load_router
from router.features import RoutingFeatures

log = logging.getLogger(__name__)

DEFAULT_ROUTER = Path("routers/default")
DEFAULT_OUTCOMES = Path("bench/builtin")
BUILTIN_BENCHMARK = "builtin"
DEFAULT_SPLIT = SplitSpec(train_splits=["router_train"], test_splits=["test"])


def build_default_models(
    config: CoeConfig,
    say: Callable[[str], None] = log.info,
    benchmark: BuiltinBenchmarkConfig | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> Path:
    """Everything lands in COE home; returns the router's version folder."""
    console = console or plain_console(stderr=True)
    ensure_builtin_benchmark(config, say, benchmark)
    train_untrained_experts(config, ExpertPool(config), say, benchmark)
    say("running every expert over the built-in benchmark's router_train and test splits")
    outcomes_dir = config.home / DEFAULT_OUTCOMES
    summary = bench_run(
        config, [BUILTIN_BENCHMARK], outcomes_dir, restart=True, console=console, show_progress=show_progress
    )
    say("training the query-level router on the router_train outcomes")
    folder, _, _ = train_router_from_outcomes(
        config, [summary.outcomes], config.resolve_in_home(DEFAULT_ROUTER), split=DEFAULT_SPLIT, console=console,
        show_progress=show_progress,
    )
    return folder


def ensure_default_models(config: CoeConfig, say: Callable[[str], None], pool: ExpertPool | None = None) -> bool:
    """Build the default experts and router once, when the configuration routes with them and they
    are missing; returns whether it built them."""
    pool = pool or ExpertPool(config)
    folder = config.resolve_in_home(DEFAULT_ROUTER)
    if config.router.path is not None or not (pool.untrained() or not has_readable_artifact(folder)):
        return False
    say(
        f"first use: no default models in {config.home}; building them once from the built-in benchmark "
        "(a few minutes; `coe demo` shows how they compare)"
    )
    build_default_models(config, say)
    pool.forget_loaded()
    return True


def load_configured_router(config: CoeConfig, pool: ExpertPool, extractor: RoutingFeatures, say):
    """The router named in the config, or the default one, built on first use."""
    ensure_default_models(config, say, pool)
    folder = config.router.path or config.resolve_in_home(DEFAULT_ROUTER)
    return load_router(folder, extractor.extractor_id, pool.identities())

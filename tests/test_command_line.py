"""The command line as users meet it: a quick start, their text printed as itself, their mistakes
in one line, coe's own bugs with a traceback, and runs that do no more work than they must."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import coe.pipeline
from coe.cli import app
from coe.pipeline import PipelineError, route
from coe.results import RESULTS_JSONL, render_summary

HEAVY = ("torch", "torchvision", "open_clip", "transformers", "sklearn", "lightgbm", "ray", "pandas", "pyarrow",
         "matplotlib", "scipy", "skimage")


def test_the_help_loads_no_heavy_library():
    probe = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from coe.cli import app\n"
        "runner = CliRunner()\n"
        "codes = [runner.invoke(app, [*command, '--help']).exit_code for command in "
        "([], ['route'], ['experts', 'list'], ['bench', 'run'], ['router', 'train'], ['serve'])]\n"
        f"print(json.dumps([codes, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    codes, loaded = json.loads(result.stdout)
    assert codes == [0] * 6 and loaded == []


def test_text_a_user_typed_prints_as_itself(tmp_path):
    folder = tmp_path / "["
    folder.mkdir()
    missing = folder / "x].yaml"  # the path's text holds "[/x]"
    result = CliRunner().invoke(app, ["route", "photos", "--config", str(missing)])
    assert result.exit_code == 2
    assert f"{missing}:cannotread" in "".join(result.output.split())  # rich may fold a long path anywhere
    result = CliRunner().invoke(app, ["route", "photos", "--set", "experts=[spectrum,nosuch]"])
    assert result.exit_code == 2
    assert "--setexperts=[spectrum,nosuch]" in "".join(result.output.split())


def _route_raising(error: Exception):
    def fail(*args, **kwargs):
        raise error

    return fail


def test_a_user_error_is_one_line_and_a_bug_is_a_traceback(monkeypatch, tmp_path):
    monkeypatch.setattr(coe.pipeline, "route", _route_raising(PipelineError("the router folder is empty")))
    result = CliRunner().invoke(app, ["route", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip() == "error: the router folder is empty"
    # However long, a message is one line off a terminal: a path in it survives copying.
    long_path = tmp_path / ("a folder with a long name " * 8) / "router"
    monkeypatch.setattr(coe.pipeline, "route", _route_raising(PipelineError(f"{long_path} is empty")))
    result = CliRunner().invoke(app, ["route", str(tmp_path)])
    assert result.output == f"error: {long_path} is empty\n"
    debug = CliRunner().invoke(app, ["--debug", "route", str(tmp_path)])
    assert debug.exit_code == 2 and "Traceback" in debug.output and "PipelineError" in debug.output
    # A ValueError from deep inside is a bug, not a user's mistake: it leaves with its traceback.
    program = (
        "import sys\n"
        "import coe.pipeline\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('an index that should exist does not')\n"
        "coe.pipeline.route = broken\n"
        "from coe.cli import app\n"
        f"sys.argv = ['coe', 'route', {str(tmp_path)!r}]\n"
        "app()\n"
    )
    crashed = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 1
    assert "Traceback" in crashed.stderr and "ValueError: an index that should exist does not" in crashed.stderr
    assert "error: an index" not in crashed.stderr


def test_an_empty_input_loads_nothing_and_writes_nothing(monkeypatch, tmp_path, trained_config):
    out = tmp_path / "out"
    out.mkdir()
    (out / RESULTS_JSONL).write_text('{"an": "earlier run"}\n')
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(coe.pipeline, "RoutePipeline", _route_raising(AssertionError("models were loaded")))
    summary = route(trained_config, [tmp_path / "empty"], out, show_progress=False)
    assert summary.paths == 0 and sorted(p.name for p in out.iterdir()) == [RESULTS_JSONL]
    assert (out / RESULTS_JSONL).read_text() == '{"an": "earlier run"}\n'
    console = Console(file=io.StringIO(), width=200)
    render_summary(summary, console)
    assert console.file.getvalue().strip() == f"no files under the given paths: nothing to judge, nothing written to {out}"


def test_a_finished_run_asked_again_loads_no_model(monkeypatch, tmp_path, trained_config):
    images = trained_config.home / "benchmarks/builtin/real"
    first = route(trained_config, [images], tmp_path / "out", expert="dct", show_progress=False)
    monkeypatch.setattr(coe.pipeline, "RoutePipeline", _route_raising(AssertionError("models were loaded")))
    again = route(trained_config, [images], tmp_path / "out", expert="dct", show_progress=False)
    assert again.done_before == again.paths == first.paths and again.setup_seconds == 0.0
    rows = (tmp_path / "out" / RESULTS_JSONL).read_text().splitlines()
    assert len(rows) == first.paths
    # Asked something else (another expert), the run loads its models and the run folder decides.
    with pytest.raises(AssertionError, match="models were loaded"):
        route(trained_config, [images], tmp_path / "out", expert="spectrum", show_progress=False)


def test_first_use_is_timed_apart_from_loading_and_progress_prints_lines_off_a_terminal(
    monkeypatch, tmp_path, trained_config
):
    built = []

    def slow_first_use(config, say, pool=None):
        if built:  # as the real one: the models are there now
            return False
        say("first use: building")
        time.sleep(3.0)  # far longer than loading this home's small models
        built.append(True)
        return True

    monkeypatch.setattr("coe.defaults.ensure_default_models", slow_first_use)
    log = io.StringIO()
    console = Console(file=log, width=200)  # a file: not a terminal
    images = trained_config.home / "benchmarks/builtin/fake"
    summary = route(trained_config, [images], tmp_path / "out", console=console)
    assert summary.first_use_seconds >= 3.0 > summary.setup_seconds
    assert summary.routing_seconds == pytest.approx(
        summary.seconds - summary.setup_seconds - summary.first_use_seconds
    )
    lines = log.getvalue().splitlines()
    assert f"routing: 0/{summary.paths} started" in lines
    assert any(line.startswith(f"routing: {summary.paths}/{summary.paths} done in ") for line in lines)
    render_summary(summary, console)
    assert "first use: building the default models" in log.getvalue()
    # With the models there, nothing is counted as first use.
    again = route(trained_config, [images], tmp_path / "again", show_progress=False)
    assert again.first_use_seconds == 0.0


def test_progress_lines_name_each_stage(tmp_path):
    from coe.core.console import progress_bar

    log = io.StringIO()
    with progress_bar(Console(file=log), "{task.description}") as progress:
        task = progress.add_task("bench run", total=20)
        progress.update(task, description="mine [/x] / jpeg:75")
        for _ in range(20):
            progress.advance(task)
    lines = log.getvalue().splitlines()
    assert lines[:2] == ["bench run: 0/20 started", "mine [/x] / jpeg:75: 0/20"]
    assert lines[-1].startswith("mine [/x] / jpeg:75: 20/20 done in ")
    assert len(lines) == 2 + 10  # a line at each tenth, the last one saying it is done


def test_relative_card_folders_resolve_next_to_the_config_file(tmp_path):
    # Covered in detail by test_config; here through the command line, from another folder.
    cards = tmp_path / "conf" / "cards"
    cards.mkdir(parents=True)
    (cards / "mine.yaml").write_text("name: mine\nfamily: dct\ncost: 2\n")
    (tmp_path / "conf" / "coe.yaml").write_text("experts_dir: cards\n")
    result = subprocess.run(
        [sys.executable, "-m", "coe", "experts", "list", "--config", str(tmp_path / "conf" / "coe.yaml")],
        capture_output=True, text=True, timeout=120, cwd=Path("/"),
    )
    assert result.returncode == 0, result.stderr
    assert "mine" in result.stdout and "legion" in result.stdout

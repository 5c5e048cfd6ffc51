"""The consoles coe prints to. Paths, file names, config values and error messages are users' text
and may hold `[brackets]` or `:colons:`; rich would read them as markup or emoji codes (and crash
on `[/x]`), so coe's consoles print every string as itself and style with `style=` only."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from coe.core.names import readable


def plain_console(stderr: bool = False, **options: Any) -> Console:
    return Console(stderr=stderr, markup=False, emoji=False, **options)


def show(console: Console, text: str, style: str | None = None) -> None:
    """Print text as itself on any console, one that reads markup included (a caller's own), and
    never broken into lines by width: a path in a message must survive copying out of a log."""
    console.print(readable(text), style=style, markup=False, emoji=False, soft_wrap=True)


class StageLines:
    """Progress as lines, for output that is not a terminal (a log file, CI, a pipe), where a bar
    would print nothing until the end: a line when a stage starts, at every tenth of the way, and
    when it ends. The subset of rich's Progress that coe uses."""

    STEPS = 10

    def __init__(self, console: Console, label: str):
        self.console = console
        self.label = label
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> StageLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {
            "description": description, "total": total, "completed": completed, "step": 0,
            "started": time.perf_counter(), "ended": False,
        }
        self._say(task_id, "started")
        return task_id

    def update(self, task_id: int, *, description: str | None = None, advance: float = 0, **_: Any) -> None:
        task = self.tasks[task_id]
        if description is not None and description != task["description"]:
            task["description"] = description
            self._say(task_id, "")
        self.advance(task_id, advance)

    def advance(self, task_id: int, advance: float = 1) -> None:
        task = self.tasks[task_id]
        task["completed"] += advance
        total = task["total"]
        if not total or task["ended"]:
            return
        if task["completed"] >= total:
            task["ended"] = True
            self._say(task_id, f"done in {time.perf_counter() - task['started']:.1f} s")
        elif int(self.STEPS * task["completed"] / total) > task["step"]:
            task["step"] = int(self.STEPS * task["completed"] / total)
            self._say(task_id, "")

    def _say(self, task_id: int, note: str) -> None:
        task = self.tasks[task_id]
        count = f"{task['completed']:g}/{task['total']:g}" if task["total"] else f"{task['completed']:g}"
        name = self.label.replace("{task.description}", task["description"])
        show(self.console, f"{name}: {count}" + (f" {note}" if note else ""))


def progress_bar(console: Console, label: str = "{task.description}", show: bool = True) -> Progress | StageLines:
    """A bar on a terminal, lines elsewhere; `label` is the first column's format, user text printed as itself."""
    if show and not console.is_terminal:
        return StageLines(console, label)
    return Progress(
        TextColumn(label, style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not show,
    )

"""What reading provenance changes in the default system's verdicts on labelled files as they are:
the wild check's as-is protocol run twice in one process, provenance off and on, with the same
models; prints each system's AUC both ways and every group whose share called fake moved.

    python -m benchmarks.scripts.provenance_effect SOURCE [--out DIR] [--set key=value ...]

SOURCE is what `coe wild` takes (a folder with real/ and fake/, or a manifest with `generator`),
e.g. ../shared/data/wild-dev2/labels.csv. Builds the default models on first use, like `coe wild`.
The matched protocol is left out: it drops metadata, so provenance cannot change it."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coe.config import load_config
from coe.wild import WildReport, run_wild_check


def effect(source: Path, out: Path, overrides: list[str]) -> tuple[WildReport, WildReport]:
    off = run_wild_check(load_config(overrides=[*overrides, "provenance.expert=null"]), source, out / "off", ["as-is"])
    on = run_wild_check(load_config(overrides=overrides), source, out / "on", ["as-is"])
    return off, on


def render(off: WildReport, on: WildReport, console: Console) -> None:
    systems = Table(title="AUC as the files are")
    for column in ("system", "provenance off", "provenance on", "on - off"):
        systems.add_column(column, justify="left" if column == "system" else "right")
    auc_off = {row.system: row.auc for row in off.systems}
    for row in on.systems:
        systems.add_row(row.system, f"{auc_off[row.system]:.3f}", f"{row.auc:.3f}", f"{row.auc - auc_off[row.system]:+.3f}")
    console.print(systems)
    groups = Table(title="share called fake, where provenance moved it")
    for column in ("system", "label", "group", "n", "off", "on"):
        groups.add_column(column)
    called_off = {(g.system, g.label, g.group): g.called_fake for g in off.groups}
    moved = [g for g in on.groups if g.called_fake != called_off[(g.system, g.label, g.group)]]
    for g in moved:
        groups.add_row(g.system, g.label, g.group, str(g.n), f"{called_off[(g.system, g.label, g.group)]:.2f}",
                       f"{g.called_fake:.2f}")
    console.print(groups if moved else "no group's share called fake moved")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/provenance-effect"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a configuration key=value")
    arguments = parser.parse_args()
    off, on = effect(arguments.source, arguments.out, arguments.overrides)
    render(off, on, Console())


if __name__ == "__main__":
    main()

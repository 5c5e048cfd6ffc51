"""The pages of `coe router train | eval` and `coe bench run`: report.html beside their tables,
the plots as PNG files next to it, referenced by relative paths, so the folder opens offline and
can be moved whole. Tables and images only, no script; every name is escaped by the templates.

Numbers are formatted here and the templates only lay them out: a cell is text, flagged when it is
the best of its column (or row) among the real systems — never the oracle, which is a bound."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import numpy as np
import pandas as pd

from benchmarks.curves import oracle_point, plot_cost_accuracy, single_expert_points
from benchmarks.metrics import correctness
from benchmarks.plots import plot_reliability, plot_roc
from benchmarks.routing_eval import SIDE_COLUMN, SYSTEM_LABELS, RoutingEvaluation
from benchmarks.runner import QUALITY_COLUMNS
from coe.reports.html import render_page, write_text_atomically
from coe.results import REPORT_FILE
from router.artifact import RouterMeta

PLOTS_DIR = "plots"
STYLES = ("report.css", "pages.css")
MISSING = "–"


@dataclass(frozen=True)
class Header:
    text: str
    note: str = ""  # shown on hover


@dataclass(frozen=True)
class Cell:
    text: str
    best: bool = False
    href: str = ""  # a link within the page


@dataclass(frozen=True)
class Row:
    cells: list[Cell]
    kind: str = ""  # "routed" or "bound": how the row is set apart


@dataclass(frozen=True)
class Table:
    headers: list[Header]
    rows: list[Row]
    header_groups: list[tuple[str, int]] | None = None  # a header row above: (text, columns spanned)


@dataclass(frozen=True)
class Plot:
    src: str
    alt: str
    caption: str


@dataclass(frozen=True)
class Stat:
    value: str
    what: str


@dataclass(frozen=True)
class Metric:
    column: str
    header: str
    digits: int  # 0: a count
    better: Literal["higher", "lower"] | None
    note: str = ""


def _number(value: object, digits: int) -> str:
    if not isinstance(value, int | float | np.number) or not math.isfinite(float(value)):
        return MISSING
    return f"{int(value)}" if digits == 0 else f"{float(value):.{digits}f}"


def _best(values: Sequence[float], better: str | None, eligible: Sequence[bool]) -> list[bool]:
    """Which values are the best among the eligible ones (ties all are); none when the eligible
    finite values are all equal, or fewer than two, as then nothing stands out."""
    candidates = [v for v, ok in zip(values, eligible, strict=True) if ok and v is not None and math.isfinite(v)]
    if better is None or len(set(candidates)) < 2:
        return [False] * len(values)
    target = max(candidates) if better == "higher" else min(candidates)
    return [ok and v == target for v, ok in zip(values, eligible, strict=True)]


def _numbers_row(label: Cell, values: Sequence[float], digits: Sequence[int], best: Sequence[bool], kind: str = "") -> Row:
    cells = [Cell(_number(v, d), best=b) for v, d, b in zip(values, digits, best, strict=True)]
    return Row([label, *cells], kind)


def _metric_table(
    name_header: str, names: Sequence[Cell], frame: pd.DataFrame, metrics: Sequence[Metric], eligible: Sequence[bool],
    kinds: Sequence[str] | None = None,
) -> Table:
    """One row per name (frame's rows, in order), one column per metric, the best of each column
    among the eligible rows flagged."""
    columns = [frame[m.column].astype(float).tolist() for m in metrics]
    flags = [_best(values, m.better, eligible) for values, m in zip(columns, metrics, strict=True)]
    rows = [
        _numbers_row(
            name, [values[i] for values in columns], [m.digits for m in metrics], [f[i] for f in flags],
            kinds[i] if kinds else "",
        )
        for i, name in enumerate(names)
    ]
    return Table([Header(name_header), *(Header(m.header, m.note) for m in metrics)], rows)


PLOT_NAMES = {"cost_accuracy": "cost–accuracy plot", "roc": "ROC curves", "reliability": "reliability diagram"}


def _plot(kind: str, png: Path, folder: Path, title: str, caption: str) -> Plot:
    """A PNG as the page in `folder` refers to it: by a relative, URL-quoted path."""
    relative = Path(os.path.relpath(png, folder)).as_posix()
    return Plot(quote(relative), f"{PLOT_NAMES[kind]}, {title}", caption)


def _write(folder: Path, template: str, **context) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomically(folder / REPORT_FILE, render_page(template, styles=STYLES, **context))


# --- the router page ---------------------------------------------------------------------------

ROUTER_METRICS = (
    Metric("accuracy", "accuracy", 3, "higher", "share of images judged right at P(fake) ≥ 0.5; a failed expert counts wrong"),
    Metric("auc", "AUC", 3, "higher", "area under the ROC curve"),
    Metric("ece", "ECE", 3, "lower", "expected calibration error of P(fake): 0 is perfectly calibrated"),
    Metric("cost", "cost/image", 2, "lower", "mean cost per image, in the units of the experts' cards"),
)
ROUTER_PLOT_CAPTIONS = {
    "cost_accuracy": "Accuracy against mean cost per image: the router as its cost weight λ grows (AIQ is the "
    "area under its curve), each expert alone, a random router, all experts merged, and the oracle.",
    "roc": "ROC curves of every system: fakes caught against reals called fake, as the threshold on P(fake) moves.",
    "reliability": "Reliability diagram: the share of fakes among images given a P(fake) near x. On the diagonal, "
    "P(fake) means what it says; below, how each system's P(fake) are spread.",
}


def _system_label(name: str, router: RouterMeta | None) -> str:
    if name == "routed" and router is not None:
        return f"routed ({router.level} level)"
    return SYSTEM_LABELS.get(name, name)


def _router_details(router: RouterMeta) -> Table:
    facts = [
        ("router", router.router_id), ("version", str(router.version)), ("level", router.level),
        ("model", router.model), ("features", router.extractor_id),
        ("trained on", ", ".join(source.path for source in router.trained_on) or MISSING),
        ("training samples", str(router.n_train)), ("created", router.created_at),
    ]
    if router.subject_column:
        facts.append(("subject column", router.subject_column))
    if router.budget is not None:
        facts.append(("cost budget per image", f"{router.budget:g}"))
    return Table([Header("what"), Header("value")], [Row([Cell(key), Cell(value)]) for key, value in facts])


def _router_stats(evaluation: RoutingEvaluation) -> list[Stat]:
    headline = evaluation.headline()
    gap = headline["oracle_gap_closed"]
    return [
        Stat(str(evaluation.n_images), "images"),
        Stat(str(evaluation.training_samples_left_out), "samples left out: their images trained the router"),
        Stat(_number(headline["accuracy"], 3), "routed accuracy"),
        Stat(_number(headline["auc"], 3), "routed AUC"),
        Stat(_number(headline["cost"], 2), "routed cost per image"),
        Stat(_number(gap, 2), "share of the oracle gap closed" if math.isfinite(gap) else "no gap to the oracle"),
        Stat(_number(headline["aiq"], 3), "AIQ (area under the cost–accuracy curve)"),
        Stat(f"{headline['abstained']:.1%}", "abstained"),
        Stat(f"{headline['best_single']} {headline['best_single_accuracy']:.3f}", "best single expert"),
        Stat(_number(headline["oracle_accuracy"], 3), "oracle accuracy (a bound)"),
    ]


def _breakdown_table(column: str, table: pd.DataFrame, router: RouterMeta | None) -> Table:
    systems = [name for name in table.columns if name != "n"]
    eligible = [name != "oracle" for name in systems]
    rows = []
    for group, values in table.iterrows():
        accuracies = [float(values[name]) for name in systems]
        rows.append(_numbers_row(
            Cell(str(group)), [*accuracies, values["n"]], [3] * len(systems) + [0],
            [*_best(accuracies, "higher", eligible), False],
        ))
    headers = [Header(column), *(Header(_system_label(name, router)) for name in systems), Header("n", "images")]
    return Table(headers, rows)


def write_router_report(
    evaluation: RoutingEvaluation,
    folder: Path,
    title: str,
    plots: Mapping[str, Path],
    router: RouterMeta | None = None,
) -> Path:
    """folder/report.html: the headline, every system side by side, the plots written by
    `write_evaluation` (by kind) and accuracy per subject, generator, benchmark or perturbation."""
    systems = evaluation.systems
    names = list(systems.index)
    kinds = ["routed" if name == "routed" else "bound" if name == "oracle" else "" for name in names]
    table = _metric_table(
        "system", [Cell(_system_label(name, router)) for name in names], systems, ROUTER_METRICS,
        [name != "oracle" for name in names], kinds,
    )
    return _write(
        folder,
        "router_report.html.j2",
        title=title,
        stats=_router_stats(evaluation),
        random_weights=router is not None and router.random_weights,
        training_samples_judged=evaluation.training_samples_judged,
        side_column=SIDE_COLUMN,
        details=_router_details(router) if router is not None else None,
        systems=table,
        plots=[_plot(kind, png, folder, title, ROUTER_PLOT_CAPTIONS[kind]) for kind, png in plots.items()],
        breakdown={column: _breakdown_table(column, frame, router) for column, frame in evaluation.breakdown.items()},
    )


# --- the benchmark run page --------------------------------------------------------------------

BENCH_METRICS = (
    Metric("n", "n", 0, None, "images the expert judged"),
    Metric("ap", "AP", 3, "higher", "average precision, fake as positive"),
    Metric("auc", "AUC", 3, "higher", "area under the ROC curve"),
    Metric("accuracy", "accuracy", 3, "higher", "at the expert's P(fake) ≥ 0.5"),
    Metric("accuracy_best", "accuracy, best threshold", 3, "higher",
           "at the threshold best on these very images: an upper bound, not an accuracy to expect"),
    Metric("tpr", "TPR", 3, "higher", "share of fakes caught"),
    Metric("tnr", "TNR", 3, "higher", "share of reals passed"),
    Metric("pd_at_far_10", "Pd@FAR 10%", 3, "higher", "fakes caught at a 10% false-alarm rate"),
    Metric("pd_at_far_5", "Pd@FAR 5%", 3, "higher", "fakes caught at a 5% false-alarm rate"),
    Metric("pd_at_far_1", "Pd@FAR 1%", 3, "higher", "fakes caught at a 1% false-alarm rate"),
    Metric("ece", "ECE", 3, "lower", "expected calibration error of P(fake): 0 is perfectly calibrated"),
)
BENCH_QUALITY_METRICS = (
    Metric(QUALITY_COLUMNS["mask_iou"], "mask IoU", 3, "higher", "overlap of the expert's mask with the true one"),
    Metric(QUALITY_COLUMNS["mask_f1"], "pixel F1", 3, "higher", "pixel F1 of the same masks"),
    Metric(QUALITY_COLUMNS["rouge_l"], "ROUGE-L", 3, "higher", "of the explanation against the reference"),
    Metric(QUALITY_COLUMNS["css"], "CSS", 3, "higher", "sentence-embedding similarity of explanation and reference"),
)
BENCH_COST_METRICS = (
    Metric("failed", "failed", 0, "lower", "images the expert could not judge"),
    Metric("latency_ms", "latency ms", 1, "lower", "measured milliseconds per image"),
    Metric("cost", "cost", 2, "lower", "the card's relative cost per image"),
)
BENCH_PLOT_CAPTIONS = {
    "roc": "ROC curves: fakes caught against reals called fake, as the threshold on P(fake) moves.",
    "reliability": "Reliability diagram of the experts' raw P(fake): on the diagonal, P(fake) means what it says; "
    "below, how each expert's P(fake) are spread.",
    "cost_accuracy": "Each expert alone and the oracle (each image to its cheapest right expert): what a router "
    "could gain, at what cost. Here a failed image counts as wrong.",
}
GROUP_COLUMNS = ("subject", "generator")


def _slug(text: str) -> str:
    """A file-name piece that no name from a user's YAML file can turn into a path or markup."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:40] or "x"


@dataclass(frozen=True)
class BenchSection:
    anchor: str
    benchmark: str
    perturbation: str
    n_images: int
    experts: Table
    plots: list[Plot]
    groups: dict[str, Table]


def _expert_p_fake(outcomes: pd.DataFrame, experts: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(images, experts) raw P(fake), NaN where the expert failed, and whether each image is fake."""
    by_image = outcomes.groupby(["path", "expert"], sort=False)["p_fake"].first().unstack("expert")
    labels = outcomes.groupby("path", sort=False)["label"].first()
    return by_image.reindex(columns=list(experts)), labels.loc[by_image.index].eq("fake").to_numpy()


def _bench_plots(outcomes: pd.DataFrame, experts: Sequence[str], out_dir: Path, stem: str, title: str) -> list[Plot]:
    p_fake, is_fake = _expert_p_fake(outcomes, experts)
    scores = {name: p_fake[name].to_numpy() for name in experts}
    right = correctness(p_fake.to_numpy(), is_fake)
    costs = outcomes.groupby("expert")["cost"].first().reindex(list(experts)).to_numpy(dtype=float)
    plots_dir = out_dir / PLOTS_DIR
    pngs = {
        "roc": plot_roc(scores, is_fake, plots_dir / f"{stem}-roc.png", f"{title}: ROC"),
        "reliability": plot_reliability(scores, is_fake, plots_dir / f"{stem}-reliability.png", f"{title}: calibration"),
        "cost_accuracy": plot_cost_accuracy(
            None, single_expert_points(right, costs, experts), oracle_point(right, costs),
            plots_dir / f"{stem}-cost-accuracy.png", f"{title}: cost and accuracy",
        ),
    }
    return [_plot(kind, png, out_dir, title, BENCH_PLOT_CAPTIONS[kind]) for kind, png in pngs.items()]


def _group_table(column: str, metrics: pd.DataFrame, outcomes: pd.DataFrame, experts: Sequence[str]) -> Table | None:
    """Accuracy and AUC of every expert per group of `column`; None with fewer than two groups."""
    rows = metrics[metrics["group_by"] == column]
    groups = sorted(rows["group"].dropna().unique())
    if len(groups) < 2:
        return None
    accuracy = rows.pivot_table(index="group", columns="expert", values="accuracy", dropna=False)
    auc = rows.pivot_table(index="group", columns="expert", values="auc", dropna=False)
    images = outcomes.groupby(column)["path"].nunique()
    table_rows = []
    for group in groups:
        accuracies = [float(accuracy.at[group, name]) if name in accuracy else math.nan for name in experts]
        aucs = [float(auc.at[group, name]) if name in auc else math.nan for name in experts]
        flags = _best(accuracies, "higher", [True] * len(experts))
        cells = [Cell(_number(images.get(group), 0))]
        for acc, area, best in zip(accuracies, aucs, flags, strict=True):
            cells += [Cell(_number(acc, 3), best=best), Cell(_number(area, 3))]
        table_rows.append(Row([Cell(str(group)), *cells]))
    headers = [Header(column), Header("n", "images"), *(Header(h) for _ in experts for h in ("accuracy", "AUC"))]
    return Table(headers, table_rows, header_groups=[("", 2), *((name, 2) for name in experts)])


def _bench_section(
    index: int, benchmark: str, perturbation: str, outcomes: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path
) -> BenchSection:
    experts = list(pd.unique(outcomes["expert"]))
    headline = metrics[metrics["group_by"] == "all"].set_index("expert").reindex(experts)
    shown = [
        *BENCH_METRICS,
        *(m for m in BENCH_QUALITY_METRICS if m.column in headline and headline[m.column].notna().any()),
        *BENCH_COST_METRICS,
    ]
    stem = f"{index:02d}-{_slug(benchmark)}-{_slug(perturbation)}"
    title = f"{benchmark} / {perturbation}"
    groups = {column: _group_table(column, metrics, outcomes, experts) for column in GROUP_COLUMNS}
    return BenchSection(
        anchor=f"s{stem}",
        benchmark=benchmark,
        perturbation=perturbation,
        n_images=int(outcomes["path"].nunique()),
        experts=_metric_table("expert", [Cell(name) for name in experts], headline, shown, [True] * len(experts)),
        plots=_bench_plots(outcomes, experts, out_dir, stem, title),
        groups={column: table for column, table in groups.items() if table is not None},
    )


def _overview(sections: Sequence[BenchSection], metrics: pd.DataFrame, experts: Sequence[str]) -> Table:
    """Accuracy of every expert on every benchmark under every perturbation, one row each."""
    overall = metrics[metrics["group_by"] == "all"].set_index(["benchmark", "perturbation", "expert"])["accuracy"]
    rows = []
    for section in sections:
        accuracies = [float(overall.get((section.benchmark, section.perturbation, name), math.nan)) for name in experts]
        label = Cell(f"{section.benchmark} / {section.perturbation}", href=f"#{section.anchor}")
        rows.append(_numbers_row(
            label, [section.n_images, *accuracies], [0] + [3] * len(experts),
            [False, *_best(accuracies, "higher", [True] * len(experts))],
        ))
    return Table([Header("benchmark / perturbation"), Header("n", "images"), *map(Header, experts)], rows)


def write_bench_report(out_dir: Path, outcomes: pd.DataFrame, metrics: pd.DataFrame, title: str = "coe bench run") -> Path:
    """out_dir/report.html for a benchmark run: per benchmark and perturbation, every expert's
    metrics, its ROC curves, reliability diagram and cost–accuracy plot (PNGs in out_dir/plots/),
    and accuracy per subject and per generator. `outcomes` and `metrics` as `run_benchmarks`
    wrote them (`read_outcomes`, `read_metrics`)."""
    experts = list(pd.unique(outcomes["expert"]))
    keys = outcomes[["benchmark", "perturbation"]].drop_duplicates()
    sections = [
        _bench_section(
            index, benchmark, perturbation,
            outcomes[(outcomes["benchmark"] == benchmark) & (outcomes["perturbation"] == perturbation)],
            metrics[(metrics["benchmark"] == benchmark) & (metrics["perturbation"] == perturbation)],
            out_dir,
        )
        for index, (benchmark, perturbation) in enumerate(keys.itertuples(index=False), start=1)
    ]
    stats = [
        Stat(str(outcomes["benchmark"].nunique()), "benchmarks"),
        Stat(str(outcomes["perturbation"].nunique()), "perturbations"),
        Stat(str(len(experts)), "experts"),
        Stat(str(outcomes["image_id"].nunique()), "distinct images"),
        Stat(str(len(outcomes)), "outcomes"),
        Stat(str(int(outcomes["error"].notna().sum())), "failed"),
    ]
    return _write(
        out_dir, "bench_report.html.j2", title=title, stats=stats, overview=_overview(sections, metrics, experts),
        sections=sections,
    )

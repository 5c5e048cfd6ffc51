"""`coe router train | eval | calibrate`: routers learned from outcome tables, judged next to
every baseline, and tuned to a cost budget.

Training: outcome tables -> one sample per (benchmark, image, perturbation) with every
configured expert's raw P(fake) -> routing features of the (perturbed) image, cached ->
per-expert Platt calibration on the training side -> correctness of each calibrated expert ->
a query-level or subject-level router, with a novelty gate on the training features -> evaluation
on the held-out side -> a new artifact version that lists its training samples.

Evaluation (`coe router eval`) leaves out every image the router was trained on, as the artifact
lists them: a router judged on its own training images looks better than it is."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from benchmarks.curves import calibrate_cost_weight
from benchmarks.metrics import correctness
from benchmarks.outcomes import (
    NO_PERTURBATION,
    OutcomeMatrix,
    OutcomeTableError,
    SplitSpec,
    image_file,
    read_outcomes,
    split_samples,
)
from benchmarks.perturbations import Perturbation
from benchmarks.routing_eval import (
    HELD_OUT,
    SIDE_COLUMN,
    TRAINED_ON,
    RoutingEvaluation,
    evaluate_routing,
    write_evaluation,
)
from coe.config import CoeConfig
from coe.core.console import plain_console, progress_bar, show
from coe.core.errors import UserError
from coe.core.imaging import ImageDecodeError, read_image
from coe.core.names import readable
from coe.models import ExpertPool, open_feature_cache, routing_features
from coe.reports.pages import write_router_report
from router.artifact import (
    RouterMeta,
    TrainingSamples,
    TrainingSource,
    load_router,
    read_router_meta,
    read_training_samples,
    resolve_artifact,
    router_home,
    save_router,
)
from router.base import create_router
from router.calibration import PlattCalibration
from router.features import RoutingFeatures, embed_with_cache

EVALUATION_DIR = "evaluation"
EMBED_CHUNK = 64


class RouterTrainingError(UserError, ValueError):
    pass


@dataclass
class Samples:
    """Outcome samples with the routing features of their images."""

    matrix: OutcomeMatrix
    features: np.ndarray

    def take(self, rows: np.ndarray) -> Samples:
        return Samples(self.matrix.take(rows), self.features[rows])


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_current_outcomes(paths: Sequence[Path], pool: ExpertPool) -> pd.DataFrame:
    """The outcome tables, read once; outcomes made by another version of an expert describe a
    different expert, so they are refused, naming the file."""
    current = pool.identities()
    frames = []
    for path in paths:
        frame = read_outcomes([path])
        frames.append(frame)
        made_by = frame.drop_duplicates(["expert", "expert_identity"])
        for expert, identity in zip(made_by["expert"], made_by["expert_identity"], strict=True):
            if expert in current and identity != current[expert]:
                raise OutcomeTableError(
                    f"{path}: outcomes of expert {expert!r} were made by identity {identity}, but the configured "
                    f"{expert!r} is {current[expert]} (retrained?): run `coe bench run` again for it"
                )
    return pd.concat(frames, ignore_index=True)


def _feature_key(image_id: str, perturbation: str) -> str:
    return image_id if perturbation == NO_PERTURBATION else f"{image_id}|{perturbation}"


def sample_features(
    config: CoeConfig, extractor: RoutingFeatures, matrix: OutcomeMatrix, console: Console, show_progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every sample's image after its perturbation, through the feature cache;
    returns (features, usable) where `usable` is False for images that cannot be read any more."""
    keys = [_feature_key(i, p) for i, p in zip(matrix.samples["image_id"], matrix.samples["perturbation"], strict=True)]
    cache = open_feature_cache(config)
    try:
        known = cache.get(extractor.extractor_id, keys)
        missing = [i for i, key in enumerate(keys) if key not in known]
        unreadable: dict[int, str] = {}
        progress = progress_bar(console, "router features", show_progress)
        with progress:
            task = progress.add_task("features", total=len(missing))
            for start in range(0, len(missing), EMBED_CHUNK):
                chunk, pixels = [], []
                for i in missing[start : start + EMBED_CHUNK]:
                    row = matrix.samples.iloc[i]
                    try:
                        image = read_image(image_file(row["path"], row["path_bytes"]), config.ingest).pixels
                    except ImageDecodeError as error:
                        unreadable[i] = error.error.message
                        continue
                    chunk.append(i)
                    pixels.append(Perturbation.parse(row["perturbation"]).apply(image))
                if chunk:
                    vectors, _ = embed_with_cache(extractor, cache, [keys[i] for i in chunk], pixels)
                    known.update({keys[i]: vector for i, vector in zip(chunk, vectors, strict=True)})
                progress.advance(task, len(missing[start : start + EMBED_CHUNK]))
    finally:
        cache.close()
    if unreadable:
        examples = "; ".join(list(unreadable.values())[:3])
        show(console, f"{len(unreadable)} sample(s) left out: their images cannot be read any more ({examples})", "yellow")
    usable = np.array([key in known for key in keys], dtype=bool)
    dim = len(next(iter(known.values()))) if known else 0
    features = np.stack([known.get(key, np.zeros(dim, np.float32)) for key in keys]) if keys else np.zeros((0, dim))
    return features, usable


def load_samples(
    config: CoeConfig, pool: ExpertPool, extractor: RoutingFeatures, outcome_paths: Sequence[Path],
    console: Console, show_progress: bool,
) -> Samples:
    matrix = OutcomeMatrix.from_frame(_read_current_outcomes(outcome_paths, pool), list(pool.cards))
    judged = ~np.isnan(matrix.p_fake).all(axis=1)  # images no expert could read carry nothing to learn
    matrix = matrix.take(np.flatnonzero(judged))
    features, usable = sample_features(config, extractor, matrix, console, show_progress)
    return Samples(matrix, features).take(np.flatnonzero(usable))


def fit_calibration(matrix: OutcomeMatrix) -> dict[str, PlattCalibration]:
    calibration = {}
    for j, name in enumerate(matrix.experts):
        judged = ~np.isnan(matrix.p_fake[:, j])
        calibration[name] = PlattCalibration.fit(matrix.p_fake[judged, j], matrix.is_fake[judged])
    return calibration


def calibrated(matrix: OutcomeMatrix, calibration: dict[str, PlattCalibration]) -> np.ndarray:
    """Calibrated P(fake), NaN kept where an expert failed."""
    columns = [calibration[name].apply(np.nan_to_num(matrix.p_fake[:, j], nan=0.5)) for j, name in enumerate(matrix.experts)]
    return np.where(np.isnan(matrix.p_fake), np.nan, np.stack(columns, axis=1))


def _groups(samples) -> dict[str, list[str]]:
    groups = {"subject": samples["subject"].tolist(), "generator": samples["generator"].tolist()}
    for column in ("benchmark", "perturbation"):
        if samples[column].nunique() > 1:
            groups[column] = samples[column].tolist()
    return groups


def evaluate(
    router, meta: RouterMeta, samples: Samples, trained: np.ndarray | None = None, left_out: int = 0
) -> RoutingEvaluation:
    """`trained` marks samples the router was trained on, judged apart in the breakdown;
    `left_out` counts those not judged at all."""
    p_fake = calibrated(samples.matrix, meta.calibration)
    p_correct = router.predict_correct(samples.features)
    chosen = router.utilities(p_correct).argmax(axis=1)
    groups = _groups(samples.matrix.samples)
    judged_trained = int(trained.sum()) if trained is not None else 0
    if judged_trained:
        groups = {SIDE_COLUMN: np.where(trained, TRAINED_ON, HELD_OUT).tolist(), **groups}
    evaluation = evaluate_routing(
        p_fake,
        samples.matrix.is_fake,
        samples.matrix.experts,
        [meta.expert_costs[name] for name in samples.matrix.experts],
        p_correct,
        chosen,
        groups,
        abstained=router.abstains(samples.features),
    )
    return replace(evaluation, training_samples_left_out=left_out, training_samples_judged=judged_trained)


def train_router_from_outcomes(
    config: CoeConfig,
    outcome_paths: Sequence[Path],
    out: Path,
    level: str = "query",
    split: SplitSpec = SplitSpec(),
    subject_column: str = "subject",
    min_support: int = 20,
    console: Console | None = None,
    show_progress: bool = True,
) -> tuple[Path, RouterMeta, RoutingEvaluation | None]:
    """Train, evaluate on the held-out side, and save as the next version in `out`."""
    console = console or plain_console(stderr=True)
    pool = ExpertPool(config)
    names = list(pool.cards)
    extractor = routing_features(config, pool.cards)
    samples = load_samples(config, pool, extractor, outcome_paths, console, show_progress)
    if subject_column not in samples.matrix.samples:
        raise RouterTrainingError(f"--subject-column {subject_column!r}: outcome tables have no such column")
    train_rows, test_rows = split_samples(samples.matrix.samples, split)
    train = samples.take(np.flatnonzero(train_rows))
    if len(np.unique(train.matrix.is_fake)) < 2:
        raise RouterTrainingError(
            f"the training side holds {len(train.features)} sample(s) without both real and fake images; "
            f"check the split ({split.model_dump(exclude_defaults=True)}) against the tables' splits "
            f"{sorted(set(samples.matrix.samples['split']))} and generators {sorted(set(samples.matrix.samples['generator']))}"
        )
    calibration = fit_calibration(train.matrix)
    right = correctness(calibrated(train.matrix, calibration), train.matrix.is_fake)
    costs = [pool.cards[name].cost for name in names]
    settings = {"model": config.router.model, "cost_weight": config.router.cost_weight,
                "abstain_below": config.router.abstain_below, "novelty_quantile": config.router.novelty_quantile,
                # The descriptors measure the pixel statistics the experts learnt from, which decide
                # whether their answers carry over; what the image shows (CLIP) does not.
                "novelty_columns": extractor.descriptor_columns or None}
    subjects = train.matrix.samples[subject_column].astype(str).to_numpy()
    router = create_router(level, **settings, min_support=min_support).fit(
        train.features, right, names, costs, subjects=subjects
    )
    training = TrainingSamples.of(train.matrix.samples["image_id"], train.matrix.samples["perturbation"])
    digest = training.digest
    meta = RouterMeta(
        router_id=f"{level}-{config.router.model}-{digest[:8]}",
        level=level,
        model=config.router.model,
        subject_column=subject_column if level == "subject" else None,
        trained_on=[TrainingSource(path=str(path), sha256=_sha256(path)) for path in outcome_paths],
        split=split.model_dump(),
        extractor_id=extractor.extractor_id,
        feature_dim=int(samples.features.shape[1]),
        random_weights=extractor.random_weights,
        experts=pool.identities(),
        expert_costs=dict(zip(names, costs, strict=True)),
        calibration=calibration,
        novelty_threshold=router.novelty_.threshold_ if router.novelty_ is not None else None,
        training_data_hash=digest,
        n_train=len(train.features),
    )
    evaluation = None
    if test_rows.any():
        evaluation = evaluate(router, meta, samples.take(np.flatnonzero(test_rows)))
        meta.metrics = evaluation.headline()
    folder = save_router(out, router, meta, training)
    if evaluation is not None:
        title = f"{meta.router_id} v{meta.version}, held out"
        write_evaluation_with_report(evaluation, folder / EVALUATION_DIR, title, meta)
    return folder, meta, evaluation


def write_evaluation_with_report(
    evaluation: RoutingEvaluation, out_dir: Path, title: str, meta: RouterMeta
) -> Path:
    """The evaluation's tables and plots in out_dir, and report.html showing them; returns the report."""
    plots = write_evaluation(evaluation, out_dir, title)
    return write_router_report(evaluation, out_dir, title, plots, meta)


def _filtered(samples: Samples, splits: Sequence[str], generators: Sequence[str], benchmarks: Sequence[str]) -> Samples:
    frame = samples.matrix.samples
    keep = np.ones(len(frame), dtype=bool)
    if splits:
        keep &= frame["split"].isin(splits).to_numpy()
    if generators:
        keep &= (frame["generator"].isin(generators) | (frame["label"] == "real")).to_numpy()
    if benchmarks:
        keep &= frame["benchmark"].isin(benchmarks).to_numpy()
    if not keep.any():
        raise RouterTrainingError(
            f"no sample left after filtering (splits {list(splits)}, generators {list(generators)}, benchmarks "
            f"{list(benchmarks)}); the tables hold splits {sorted(set(frame['split']))}"
        )
    return samples.take(np.flatnonzero(keep))


def _load(config: CoeConfig, router_path: Path):
    pool = ExpertPool(config)
    extractor = routing_features(config, pool.cards)
    folder = resolve_artifact(router_path)
    router, meta = load_router(folder, extractor.extractor_id, pool.identities())
    return pool, extractor, router, meta, read_training_samples(folder)


def _trained_on(samples: Samples, training: TrainingSamples) -> np.ndarray:
    """Which samples show an image the router was trained on."""
    return samples.matrix.samples["image_id"].isin(training.image_ids).to_numpy()


def _held_out_hint(meta: RouterMeta) -> str:
    split = SplitSpec.model_validate(meta.split)
    if split.test_splits:
        return "its held-out split: " + " ".join(f"--split {name}" for name in split.test_splits)
    if split.test_benchmarks:
        return "its held-out benchmarks: " + " ".join(f"--benchmark {name}" for name in split.test_benchmarks)
    return f"it held out {split.holdout:.0%} of the images of its tables by hash"


def evaluate_router(
    config: CoeConfig,
    router_path: Path,
    outcome_paths: Sequence[Path],
    out_dir: Path,
    splits: Sequence[str] = (),
    generators: Sequence[str] = (),
    benchmarks: Sequence[str] = (),
    include_training: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> tuple[RoutingEvaluation, RouterMeta, Path]:
    """The router on (a filtered part of) outcome tables, without the images it was trained on —
    or with them (`include_training`), set apart in the breakdown; writes tables, plots and
    report.html into out_dir and returns the report's path."""
    console = console or plain_console(stderr=True)
    pool, extractor, router, meta, training = _load(config, router_path)
    samples = _filtered(
        load_samples(config, pool, extractor, outcome_paths, console, show_progress), splits, generators, benchmarks
    )
    trained = _trained_on(samples, training)
    if include_training:
        evaluation = evaluate(router, meta, samples, trained=trained)
    elif trained.all():
        raise RouterTrainingError(
            f"all {len(trained)} samples to judge show images router {meta.router_id} v{meta.version} was trained "
            f"on: judge it on outcomes of images it never saw ({_held_out_hint(meta)}), or pass --include-training "
            "to see it on its training images, set apart"
        )
    else:
        evaluation = evaluate(router, meta, samples.take(np.flatnonzero(~trained)), left_out=int(trained.sum()))
    report = write_evaluation_with_report(evaluation, out_dir, f"{meta.router_id} v{meta.version}", meta)
    return evaluation, meta, report


def calibrate_router(
    config: CoeConfig,
    router_path: Path,
    outcome_paths: Sequence[Path],
    budget: float,
    splits: Sequence[str] = (),
    console: Console | None = None,
    show_progress: bool = True,
) -> tuple[Path, RouterMeta, float, float]:
    """Pick the cost weight lambda that keeps the mean cost per image on the reference outcomes
    within `budget`, and save the router with it as a new version; returns (folder, meta, lambda,
    the mean cost per image it gives on the reference)."""
    console = console or plain_console(stderr=True)
    pool, extractor, router, meta, training = _load(config, router_path)
    samples = load_samples(config, pool, extractor, outcome_paths, console, show_progress)
    if splits:
        samples = _filtered(samples, splits, (), ())
    # Tuning one scalar on training images is fair, but the router is surer of itself there than on
    # unseen images, so the cost it spends on those may differ: say so rather than refuse.
    trained = int(_trained_on(samples, training).sum())
    if trained:
        console.print(
            f"{trained} of {len(samples.features)} reference sample(s) show images the router was trained on: on "
            "images it never saw, what it spends per image may differ from the budget", style="yellow",
        )
    p_correct = router.predict_correct(samples.features)
    costs = np.array([meta.expert_costs[name] for name in samples.matrix.experts])
    router.cost_weight = calibrate_cost_weight(p_correct, costs, budget)
    achieved = float(costs[router.utilities(p_correct).argmax(axis=1)].mean())
    calibrated_meta = meta.model_copy(update={"budget": budget, "metrics": {}})
    folder = save_router(router_home(router_path), router, calibrated_meta, training)
    return folder, read_router_meta(folder), router.cost_weight, achieved


def render_evaluation(evaluation: RoutingEvaluation, console: Console, title: str, random_weights: bool) -> None:
    """The systems table, the gap closed, and accuracy per group, as rich tables."""
    if evaluation.training_samples_left_out:
        console.print(
            f"{evaluation.training_samples_left_out} sample(s) left out: their images trained the router (as its "
            "artifact lists them); --include-training judges them too, set apart", style="yellow",
        )
    judged_trained = evaluation.training_samples_judged
    trained_note = f", {judged_trained} of them trained on" if judged_trained else ""
    systems = Table(title=f"{title} ({evaluation.n_images} images{trained_note})")
    for column in ("system", "accuracy", "AUC", "cost/image"):
        systems.add_column(column, justify="left" if column == "system" else "right")
    for system, row in evaluation.systems.iterrows():
        systems.add_row(
            str(system), f"{row['accuracy']:.3f}", f"{row['auc']:.3f}", f"{row['cost']:.2f}",
            style="bold green" if system == "routed" else "",
        )
    console.print(systems)
    headline = evaluation.headline()
    console.print(
        f"routed vs best single ({headline['best_single']} {headline['best_single_accuracy']:.3f}) and oracle "
        f"({headline['oracle_accuracy']:.3f}): share of the oracle gap closed {headline['oracle_gap_closed']:.2f}; "
        f"AIQ (area under the cost-accuracy curve) {headline['aiq']:.3f}"
        + (f"; abstained on {headline['abstained']:.1%}" if headline["abstained"] else "")
    )
    coverage = evaluation.coverage
    surest = Table(title="accuracy where each system is surest (coverage: the share of images it answers)")
    surest.add_column("system")
    for share in coverage.columns:
        surest.add_column(str(share), justify="right")
    for system, row in coverage.iterrows():
        surest.add_row(str(system), *(f"{value:.3f}" for value in row))
    console.print(surest)
    for column, table in evaluation.breakdown.items():
        view = Table(title=f"accuracy per {column}")
        view.add_column(column)
        for name in table.columns:
            view.add_column(str(name), justify="right")
        for group, row in table.iterrows():
            view.add_row(Text(readable(str(group))), *(f"{int(v)}" if name == "n" else f"{v:.3f}" for name, v in row.items()))
        console.print(view)
    if judged_trained:
        console.print(
            f"{judged_trained} of these {evaluation.n_images} samples show images the router was trained on: the "
            f"figures above are optimistic; 'accuracy per {SIDE_COLUMN}' sets them apart", style="bold yellow",
        )
    if random_weights:
        console.print("The router read CLIP features with RANDOM weights (no pretrained CLIP weights here).",
                      style="bold red")

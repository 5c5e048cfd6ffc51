"""Trained models on disk: loading the configured experts and router, and building the default
ones (built-in benchmark -> experts -> router) once, on first use or for `coe demo`."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from benchmarks.builtin import MANIFEST_FILE, BuiltinBenchmarkConfig, build_builtin_benchmark, read_builtin_manifest
from benchmarks.metrics import correctness, routing_comparison
from coe.config import CoeConfig, ConfigError, load_expert_cards
from coe.core.imaging import read_image
from experts.base import Expert, ExpertCard, TrainableExpert, create_expert
from experts.classic import META_FILE, DescriptorExpert
from router.artifact import RouterMeta, load_router, save_router
from router.calibration import PlattCalibration
from router.features import ClipFeatureExtractor, FeatureCache, RoutingFeatures, embed_with_cache
from router.query import QueryRouter

log = logging.getLogger(__name__)

DEFAULT_ROUTER = Path("routers/default")
BENCHMARK_FOLDER = Path("benchmarks/builtin")
FEATURE_CACHE = Path("features.sqlite")
EMBED_CHUNK = 64


def expert_identity(expert: Expert) -> str:
    data_hash = getattr(expert, "meta", {}).get("training_data_hash", "untrained")
    return f"{expert.card.version}:{data_hash[:12]}"


def expert_weights_folder(config: CoeConfig, card: ExpertCard) -> Path:
    return config.resolve_in_home(card.weights or f"experts/{card.name}")


class ExpertPool:
    """The configured experts, each loaded from its trained weights once, when first needed."""

    def __init__(self, config: CoeConfig, cards: dict[str, ExpertCard] | None = None):
        self.config = config
        self.cards = cards if cards is not None else load_expert_cards(config)
        self._loaded: dict[str, Expert] = {}

    def weights_folder(self, name: str) -> Path:
        return expert_weights_folder(self.config, self.cards[name])

    def get(self, name: str) -> Expert:
        if name not in self._loaded:
            expert = create_expert(self.cards[name])
            if isinstance(expert, TrainableExpert):
                expert.load(self.weights_folder(name))
            self._loaded[name] = expert
        return self._loaded[name]

    def forget_loaded(self) -> None:
        """Drop loaded experts so that the next `get` reads freshly trained weights."""
        self._loaded.clear()

    def identities(self) -> dict[str, str]:
        return {name: expert_identity(self.get(name)) for name in self.cards}

    def untrained(self) -> list[str]:
        return [
            name
            for name in self.cards
            if isinstance(create_expert(self.cards[name]), TrainableExpert)
            and not (self.weights_folder(name) / META_FILE).exists()
        ]


def routing_features(config: CoeConfig, cards: dict[str, ExpertCard]) -> RoutingFeatures:
    """CLIP plus the configured experts' descriptors. A descriptor depends on the expert's
    parameters, not on its training, so its identity is the card's version and parameters."""
    descriptors = {}
    for name in config.features.descriptors:
        expert = create_expert(cards[name])
        if not isinstance(expert, DescriptorExpert):
            raise ConfigError(f"features.descriptors: expert {name!r} ({expert.family}) has no descriptor")
        parameters = hashlib.sha256(expert.params.model_dump_json().encode()).hexdigest()[:8]
        descriptors[name] = (f"{expert.card.version}:{parameters}", expert.describe_batch)
    return RoutingFeatures(ClipFeatureExtractor(config.features), descriptors)


def open_feature_cache(config: CoeConfig) -> FeatureCache:
    return FeatureCache(config.home / FEATURE_CACHE)


@dataclass
class LabelledImages:
    paths: list[str]
    ids: list[str]
    pixels: list[np.ndarray]
    is_fake: np.ndarray


def read_manifest_split(benchmark_dir: Path, split: str) -> LabelledImages:
    rows = read_builtin_manifest(benchmark_dir, split)
    decoded = [read_image(benchmark_dir / row["path"]) for row in rows]
    return LabelledImages(
        paths=[str(benchmark_dir / row["path"]) for row in rows],
        ids=[image.record.id for image in decoded],
        pixels=[image.pixels for image in decoded],
        is_fake=np.array([row["label"] == "fake" for row in rows], dtype=int),
    )


def expert_probabilities(pool: ExpertPool, names: list[str], images: list[np.ndarray]) -> np.ndarray:
    return np.stack([pool.get(name).predict_proba(images) for name in names], axis=1)


def _embed_all(extractor: RoutingFeatures, cache: FeatureCache, images: LabelledImages, what: str) -> np.ndarray:
    """Features of every image, in chunks so that a progress bar can follow the CLIP embedding."""
    starts = range(0, len(images.ids), EMBED_CHUNK)
    return np.concatenate([
        embed_with_cache(extractor, cache, images.ids[i : i + EMBED_CHUNK], images.pixels[i : i + EMBED_CHUNK])[0]
        for i in track(starts, description=what, console=Console(stderr=True), transient=True)
    ])


def train_router(
    config: CoeConfig,
    pool: ExpertPool,
    extractor: RoutingFeatures,
    train: LabelledImages,
    evaluation: LabelledImages | None,
    out_folder: Path,
) -> RouterMeta:
    """Fit calibration and a query-level router on the experts' outcomes on `train`."""
    names = list(pool.cards)
    cache = open_feature_cache(config)
    try:
        features = _embed_all(extractor, cache, train, "router features (train)")
        eval_features = _embed_all(extractor, cache, evaluation, "router features (eval)") if evaluation else None
    finally:
        cache.close()
    raw = expert_probabilities(pool, names, train.pixels)
    calibration = {name: PlattCalibration.fit(raw[:, j], train.is_fake) for j, name in enumerate(names)}
    calibrated = np.stack([calibration[name].apply(raw[:, j]) for j, name in enumerate(names)], axis=1)
    costs = [pool.cards[name].cost for name in names]
    router = QueryRouter(
        model=config.router.model, cost_weight=config.router.cost_weight, abstain_below=config.router.abstain_below
    ).fit(features, correctness(calibrated, train.is_fake), names, costs)
    metrics: dict[str, float] = {}
    if evaluation is not None:
        eval_raw = expert_probabilities(pool, names, evaluation.pixels)
        eval_p = np.stack([calibration[name].apply(eval_raw[:, j]) for j, name in enumerate(names)], axis=1)
        routed = eval_p[np.arange(len(eval_p)), router.choose(eval_features)]
        table = routing_comparison(eval_p, evaluation.is_fake, names, routed)
        metrics = {f"{system}.{metric}": value for system, row in table.items() for metric, value in row.items()}
    digest = hashlib.sha256("".join(sorted(train.ids)).encode()).hexdigest()
    meta = RouterMeta(
        router_id=f"query-{config.router.model}-{digest[:8]}",
        level="query",
        extractor_id=extractor.extractor_id,
        feature_dim=int(features.shape[1]),
        random_weights=extractor.random_weights,
        experts=pool.identities(),
        expert_costs=dict(zip(names, costs, strict=True)),
        calibration=calibration,
        training_data_hash=digest,
        n_train=len(train.ids),
        metrics=metrics,
    )
    save_router(out_folder, router, meta)
    return meta


def build_default_models(
    config: CoeConfig,
    say: Callable[[str], None] = log.info,
    benchmark: BuiltinBenchmarkConfig | None = None,
    extractor: RoutingFeatures | None = None,
) -> Path:
    """Built-in benchmark -> train the configured experts that have no weights yet -> train the query router.

    Everything lands in COE home; returns the router folder."""
    benchmark_dir = config.home / BENCHMARK_FOLDER
    if not (benchmark_dir / MANIFEST_FILE).exists():
        say(f"building the built-in benchmark (simulated artifacts) in {benchmark_dir}")
        build_builtin_benchmark(benchmark_dir, benchmark or BuiltinBenchmarkConfig())
    pool = ExpertPool(config)
    untrained = pool.untrained()
    if untrained:
        expert_train = read_manifest_split(benchmark_dir, "expert_train")
    for name in untrained:  # experts a user trained on their own data are kept
        say(f"training expert {name} on {len(expert_train.ids)} built-in images")
        create_expert(pool.cards[name]).fit(expert_train.pixels, expert_train.is_fake).save(pool.weights_folder(name))
    extractor = extractor or routing_features(config, pool.cards)
    router_folder = config.resolve_in_home(DEFAULT_ROUTER)
    say(f"training the query-level router on {extractor.extractor_id}")
    train_router(
        config,
        pool,
        extractor,
        read_manifest_split(benchmark_dir, "router_train"),
        read_manifest_split(benchmark_dir, "test"),
        router_folder,
    )
    return router_folder


def load_configured_router(config: CoeConfig, pool: ExpertPool, extractor: RoutingFeatures, say):
    """The router named in the config, or the default one, built on first use."""
    folder = config.router.path or config.resolve_in_home(DEFAULT_ROUTER)
    if config.router.path is None and (pool.untrained() or not (folder / "router.json").exists()):
        say(
            f"first use: no default models in {config.home}; building them once from the built-in benchmark "
            "(a few minutes; `coe demo` shows how they compare)"
        )
        build_default_models(config, say, extractor=extractor)
        pool.forget_loaded()
    return load_router(folder, extractor.extractor_id, pool.identities())

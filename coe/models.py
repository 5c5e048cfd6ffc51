"""The configured experts on disk, and the features the router reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from coe.config import CoeConfig, ConfigError, load_expert_cards
from experts.base import Expert, ExpertCard, PretrainedExpert, TrainableExpert, create_expert
from experts.weights import WeightsNotFoundError, hub_repo, locate_weights
from experts.classic import META_FILE, DescriptorExpert
from router.features import ClipFeatureExtractor, FeatureCache, RoutingFeatures

FEATURE_CACHE = Path("features.sqlite")


def expert_weights_folder(config: CoeConfig, card: ExpertCard) -> Path:
    return config.resolve_in_home(card.weights or f"experts/{card.name}")


def pretrained_weights(config: CoeConfig, expert: PretrainedExpert) -> str | Path:
    """The card's `weights` (a hub reference, or a path resolved in COE home), else the family's default."""
    reference = expert.card.weights or expert.default_weights
    return reference if hub_repo(reference) else config.resolve_in_home(reference)


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
            elif isinstance(expert, PretrainedExpert):
                expert.load(pretrained_weights(self.config, expert))
            self._loaded[name] = expert
        return self._loaded[name]

    def forget_loaded(self) -> None:
        """Drop loaded experts so that the next `get` reads freshly trained weights."""
        self._loaded.clear()

    def identities(self) -> dict[str, str]:
        return {name: self.get(name).identity for name in self.cards}

    def untrained(self) -> list[str]:
        return [
            name
            for name in self.cards
            if isinstance(create_expert(self.cards[name]), TrainableExpert)
            and not (self.weights_folder(name) / META_FILE).exists()
        ]


def weights_status(config: CoeConfig, card: ExpertCard) -> str:
    """Where an expert's weights are, or what is missing, without loading or downloading anything."""
    expert = create_expert(card)
    if isinstance(expert, TrainableExpert):
        folder = expert_weights_folder(config, card)
        return f"trained: {folder}" if (folder / META_FILE).exists() else f"untrained: coe experts train {card.name}"
    if isinstance(expert, PretrainedExpert):
        try:
            return f"found: {locate_weights(pretrained_weights(config, expert), card.name, download=False)}"
        except WeightsNotFoundError as error:
            return f"missing: {error} (published at {expert.published_at})"
    return "needs no weights"


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

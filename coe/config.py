"""Configuration: pydantic models, YAML files in configs/, and CLI overrides on top.

Precedence: configs/defaults.yaml < a user's --config file < --set key=value options. Unknown keys
and bad values are rejected with a message that names the key and the file it came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coe.core.errors import UserError
from coe.core.imaging import DecodeLimits
from coe.core.records import VerdictLabel
from coe.core.yaml_files import YamlFileError, load_yaml_model, read_yaml_mapping, validation_problems
from configs import CONFIG_DIR
from experts.base import ExpertCard
from router.features import ClipSpec

DEFAULTS_FILE = CONFIG_DIR / "defaults.yaml"
SHIPPED_CARDS = CONFIG_DIR / "experts"


class ConfigError(UserError, ValueError):
    pass


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeaturesConfig(ClipSpec):
    descriptors: list[str] = Field(
        default=["spectrum", "dct", "residual"],
        description="experts whose forensic descriptor is appended to the CLIP embedding for routing",
    )


class RouterConfig(StrictModel):
    path: Path | None = Field(
        default=None, description="router artifact; null = the default router in COE home, built on first use"
    )
    model: Literal["logreg", "lightgbm"] = "lightgbm"
    cost_weight: float = Field(default=0.0, ge=0.0, description="lambda in P(correct) - lambda * cost")
    abstain_below: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="when training: the router abstains when the best P(correct) is lower (kept in the artifact)",
    )
    novelty_quantile: float | None = Field(
        default=0.99, gt=0.0, lt=1.0,
        description="when training: the router abstains on images more novel than this share of its training images "
        "(out of domain); null: no novelty gate",
    )
    on_abstain: Literal["uncertain", "escalate"] = Field(
        default="uncertain",
        description="uncertain: answer 'uncertain'; escalate: also ask the next-ranked experts and merge their answers",
    )
    escalate_to: int = Field(default=2, ge=2, description="how many top-ranked experts an escalated image goes to")


class LikelihoodRatios(StrictModel):
    towards_fake: float = Field(ge=1.0, description="for evidence that the image was generated or edited with AI")
    towards_real: float = Field(ge=1.0, description="for evidence that it was captured by a camera")


class MergerConfig(StrictModel):
    uncertain_low: float = Field(default=0.35, ge=0.0, le=0.5)
    uncertain_high: float = Field(default=0.65, ge=0.5, le=1.0)
    claim_likelihood_ratio: LikelihoodRatios = Field(
        default=LikelihoodRatios(towards_fake=1000.0, towards_real=19.0),
        description="how much more likely a provenance claim (unsigned metadata naming a generator, a valid but "
        "untrusted manifest) is when the image is what it says; it multiplies the pixel experts' odds its way. "
        "Towards real it is weaker: a forger gains by making a fake say `captured`, rarely a photo say `generated`",
    )
    hint_likelihood_ratio: LikelihoodRatios = Field(
        default=LikelihoodRatios(towards_fake=2.0, towards_real=2.0),
        description="the same for a provenance hint (camera EXIF, a weak watermark hit), weak evidence",
    )
    pixel_confidence: float = Field(
        default=0.98, gt=0.5, lt=1.0,
        description="before provenance weighs in, the pixel answer is held within [1 - this, this]: the experts' "
        "calibration comes from the built-in benchmark and is overconfident on real generators",
    )

    @model_validator(mode="after")
    def _claims_outweigh_hints(self) -> MergerConfig:
        for way in ("towards_fake", "towards_real"):
            if getattr(self.hint_likelihood_ratio, way) > getattr(self.claim_likelihood_ratio, way):
                raise ValueError(f"hint_likelihood_ratio.{way} must not exceed claim_likelihood_ratio.{way}")
        return self


class ProvenanceConfig(StrictModel):
    expert: str | None = Field(
        default="provenance",
        description="the card that reads what each file says about its origin (C2PA manifests, IPTC, generator "
        "metadata, EXIF) before routing; null: provenance is not read and images are judged on pixels alone",
    )


class LocalizeConfig(StrictModel):
    expert: str | None = Field(
        default=None,
        description="a localising expert's card (e.g. legion): after the verdict, images labelled as in `verdicts` "
        "get its artifact masks and explanation",
    )
    verdicts: list[VerdictLabel] = Field(default=["fake"], min_length=1)


class RunConfig(StrictModel):
    chunk_size: int = Field(default=64, ge=1, description="images decoded, embedded and committed together")
    decode_workers: int = Field(default=2, ge=1)
    ray_workers: int = Field(default=2, ge=1, description="`coe route --ray`: actors, each with its own models")
    ray_worker_cpus: float = Field(default=1.0, gt=0.0, description="CPUs Ray reserves for each of them")


class CoeConfig(StrictModel):
    home: Path = Field(
        default=Path("~/.cache/coe"), description="trained experts, routers, feature cache (env COE_HOME wins)"
    )
    experts: list[str] = Field(default=["spectrum", "dct", "residual"], min_length=1)
    experts_dir: Path | None = Field(
        default=None,
        description="a folder of your own expert cards (<name>.yaml); a card there wins over the shipped card of "
        "the same name. Relative to the file that sets it (to the working folder for --set)",
    )
    ingest: DecodeLimits = DecodeLimits()
    features: FeaturesConfig = FeaturesConfig()
    router: RouterConfig = RouterConfig()
    merger: MergerConfig = MergerConfig()
    provenance: ProvenanceConfig = ProvenanceConfig()
    localize: LocalizeConfig = LocalizeConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _resolve_paths(self) -> CoeConfig:
        self.home = Path(os.environ.get("COE_HOME") or self.home).expanduser()
        if self.experts_dir is not None:
            self.experts_dir = self.experts_dir.expanduser().absolute()
        unknown = sorted(set(self.features.descriptors) - set(self.experts))
        if unknown:
            raise ValueError(f"features.descriptors names experts that are not enabled: {unknown}")
        return self

    def resolve_in_home(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.home / path

    @property
    def card_dirs(self) -> list[Path]:
        """Where expert cards are looked up, first match winning."""
        return [*([self.experts_dir] if self.experts_dir else []), SHIPPED_CARDS]

    def card_files(self) -> dict[str, Path]:
        """Every card by name, a user's winning over a shipped one."""
        found: dict[str, Path] = {}
        for folder in self.card_dirs:
            for card_file in sorted(folder.glob("*.yaml")):
                found.setdefault(card_file.stem, card_file)
        return dict(sorted(found.items()))


def _read_layer(path: Path) -> dict[str, Any]:
    try:
        return read_yaml_mapping(path)
    except YamlFileError as error:
        raise ConfigError(str(error)) from None


def _describe(error: ValidationError, source: str) -> str:
    return "\n".join(validation_problems(error, source))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(assignment: str) -> dict[str, Any]:
    """`features.batch_size=16` -> {"features": {"batch_size": 16}}; the value is read as YAML."""
    key, separator, raw = assignment.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. features.batch_size=16")
    value: Any = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def _relative_to(folder: Path, layer: dict[str, Any]) -> dict[str, Any]:
    """A path in a configuration file means what it says next to that file, wherever coe runs."""
    if isinstance(layer.get("experts_dir"), str) and not Path(layer["experts_dir"]).expanduser().is_absolute():
        layer = {**layer, "experts_dir": str(folder / layer["experts_dir"])}
    return layer


def load_config(config_file: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> CoeConfig:
    layers: list[tuple[str, dict[str, Any]]] = [(str(DEFAULTS_FILE), _read_layer(DEFAULTS_FILE))]
    if config_file is not None:
        layers.append((str(config_file), _relative_to(Path(config_file).parent, _read_layer(Path(config_file)))))
    layers += [(f"--set {assignment}", parse_override(assignment)) for assignment in overrides]
    merged: dict[str, Any] = {}
    for source, layer in layers:
        # Validate layer by layer, so an error names the file that holds the bad key. Errors
        # between keys (no location) may be fixed by a later layer, so they wait for the end.
        merged = _merge(merged, layer)
        try:
            CoeConfig.model_validate(merged)
        except ValidationError as error:
            if any(item["loc"] for item in error.errors()):
                raise ConfigError(_describe(error, source)) from None
    try:
        return CoeConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, " < ".join(source for source, _ in layers))) from None


def load_expert_card(config: CoeConfig, name: str) -> ExpertCard:
    card_file = config.card_files().get(name)
    if card_file is None:
        raise ConfigError(
            f"expert {name!r} is configured but no card {name}.yaml is in {' or '.join(map(str, config.card_dirs))}; "
            f"available cards: {sorted(config.card_files())}"
        )
    try:
        card = load_yaml_model(card_file, ExpertCard)
    except YamlFileError as error:
        raise ConfigError(str(error)) from None
    if card.name != name:
        raise ConfigError(f"{card_file}: name: {card.name!r} does not match the file name {name!r}")
    return card


def load_expert_cards(config: CoeConfig) -> dict[str, ExpertCard]:
    """The cards of the enabled experts, in configured order."""
    return {name: load_expert_card(config, name) for name in config.experts}

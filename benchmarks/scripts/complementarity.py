"""Do the experts complement each other? Routing only pays if no single expert is best on every
generator and the per-image oracle (right when any expert is right) clearly beats the best one.

Builds the built-in benchmark with every generator (the autoencoder and the three simulators) into
a temporary folder, trains each expert on `expert_train` and prints its accuracy per generator on
`test`:

    python -m benchmarks.scripts.complementarity
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from benchmarks.builtin import (
    GENERATORS,
    REAL_GENERATOR,
    BuiltinBenchmarkConfig,
    build_builtin_benchmark,
    read_builtin_manifest,
)
from coe.config import load_config
from coe.core.imaging import read_image
from coe.core.yaml_files import load_yaml_model
from configs import CONFIG_DIR
from experts.base import ExpertCard, create_expert

CARDS_DIR = CONFIG_DIR / "experts"
EXPERTS = tuple(load_config().experts)  # the default configuration's
ORACLE = "oracle"
OVERALL = "all"


class ComplementarityReport(BaseModel):
    """Test accuracy per expert (and the oracle), per generator; `real` is 1 - false-positive rate."""

    accuracy: dict[str, dict[str, float]]
    test_counts: dict[str, int]

    def best_expert(self, generator: str) -> str:
        experts = {name: scores for name, scores in self.accuracy.items() if name != ORACLE}
        return max(experts, key=lambda name: experts[name][generator])

    def table(self) -> str:
        columns = list(self.test_counts)
        lines = [f"{'expert':<10}" + "".join(f"{column:>18}" for column in columns)]
        lines.append(f"{'(n test)':<10}" + "".join(f"{self.test_counts[column]:>18}" for column in columns))
        for name, scores in self.accuracy.items():
            lines.append(f"{name:<10}" + "".join(f"{scores[column]:>18.3f}" for column in columns))
        return "\n".join(lines)


def load_card(name: str) -> ExpertCard:
    return load_yaml_model(CARDS_DIR / f"{name}.yaml", ExpertCard)


def load_images(root: Path, rows: Sequence[dict[str, str]]) -> list[np.ndarray]:
    return [read_image(root / row["path"]).pixels for row in rows]


def fake_labels(rows: Sequence[dict[str, str]]) -> np.ndarray:
    return np.array([row["label"] == "fake" for row in rows], dtype=int)


def evaluate_complementarity(manifest: Path, experts: Sequence[str] = EXPERTS) -> ComplementarityReport:
    """Train each expert on `expert_train` and score it on `test`, per generator."""
    train_rows = read_builtin_manifest(manifest.parent, "expert_train")
    test_rows = read_builtin_manifest(manifest.parent, "test")
    train_images, test_images = (
        load_images(manifest.parent, train_rows),
        load_images(manifest.parent, test_rows),
    )
    test_labels = fake_labels(test_rows)

    correct: dict[str, np.ndarray] = {}
    for name in experts:
        card = load_card(name)
        expert = create_expert(card).fit(train_images, fake_labels(train_rows))
        correct[name] = (expert.predict_proba(test_images) >= card.threshold).astype(int) == test_labels
    correct[ORACLE] = np.any(np.stack(list(correct.values())), axis=0)

    generators = np.array([row["generator"] for row in test_rows])
    groups = {REAL_GENERATOR: generators == REAL_GENERATOR}
    groups |= {
        generator: generators == generator
        for generator in dict.fromkeys(generators)
        if generator != REAL_GENERATOR
    }
    groups[OVERALL] = np.ones(len(test_rows), dtype=bool)
    return ComplementarityReport(
        accuracy={
            name: {group: float(hits[members].mean()) for group, members in groups.items()}
            for name, hits in correct.items()
        },
        test_counts={group: int(members.sum()) for group, members in groups.items()},
    )


def main() -> None:
    config = BuiltinBenchmarkConfig(generators=list(GENERATORS), fakes_per_generator=120)
    with tempfile.TemporaryDirectory(prefix="coe-builtin-") as folder:
        start = time.perf_counter()
        manifest = build_builtin_benchmark(Path(folder) / "builtin", config)
        built_s = time.perf_counter() - start
        start = time.perf_counter()
        report = evaluate_complementarity(manifest)
        evaluated_s = time.perf_counter() - start
    print(
        f"built-in benchmark ({', '.join(config.generators)}; seed {config.seed}) built in {built_s:.1f} s; "
        f"experts trained on expert_train and scored on test in {evaluated_s:.1f} s"
    )
    print("accuracy on the test split (real = 1 - false-positive rate; oracle = any expert right):")
    print(report.table())
    generators = [group for group in report.test_counts if group not in (REAL_GENERATOR, OVERALL)]
    print("best expert per generator: " + ", ".join(f"{g}: {report.best_expert(g)}" for g in generators))


if __name__ == "__main__":
    main()

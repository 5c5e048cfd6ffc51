"""Outcome tables: which expert got which benchmark image right, at what cost — the data routers
are trained on (Bench-CoE's "which experts were right" vectors, with probabilities and costs).

One row per (benchmark, image, perturbation, expert), stored as Parquet with the schema below;
`OUTCOME_SCHEMA` is the single place that defines it (README "Outcome tables" prints it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from coe.core.errors import UserError
from coe.core.names import is_utf8, readable

NO_PERTURBATION = "none"


def _field(name: str, kind: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, kind, nullable=nullable, metadata={"doc": doc})


OUTCOME_SCHEMA = pa.schema([
    _field("benchmark", pa.string(), "benchmark name (its YAML definition's `name`)"),
    _field("split", pa.string(), "the benchmark's own split of the image ('all' when it has none)"),
    _field("image_id", pa.string(), "sha256 of the image file's bytes"),
    _field("path", pa.string(), "the image file"),
    _field("label", pa.string(), "ground truth: real or fake"),
    _field("subject", pa.string(), "content category from the benchmark ('unknown' when none)"),
    _field("generator", pa.string(), "generator or subset name from the benchmark ('unknown' when none)"),
    _field("perturbation", pa.string(), "what was done to the image before the expert saw it: none, jpeg:Q, "
           "blur:SIGMA, resize:SCALE or crop:FRACTION"),
    _field("expert", pa.string(), "expert name (its card's `name`)"),
    _field("expert_identity", pa.string(), "expert version and training-data hash: outcomes of another identity "
           "are stale"),
    _field("p_fake", pa.float64(), "the expert's raw (uncalibrated) P(fake); null when it failed", nullable=True),
    _field("verdict", pa.string(), "the expert's label at its card threshold, real or fake; null when it failed",
           nullable=True),
    _field("correct", pa.bool_(), "verdict == label; null when the expert failed", nullable=True),
    _field("latency_ms", pa.float64(), "measured milliseconds per image (batch time / batch size)", nullable=True),
    _field("cost", pa.float64(), "the expert card's relative cost per image"),
    _field("mask_iou", pa.float64(), "IoU of the expert's union mask with the ground-truth mask, where both exist",
           nullable=True),
    _field("mask_f1", pa.float64(), "pixel F1 of the same masks", nullable=True),
    _field("mask_file", pa.string(), "the expert's union mask (PNG), relative to the run folder", nullable=True),
    _field("explanation", pa.string(), "the expert's explanation text, if it gave one", nullable=True),
    _field("rouge_l", pa.float64(), "ROUGE-L F of the explanation against the reference explanation", nullable=True),
    _field("css", pa.float64(), "cosine similarity of sentence embeddings of explanation and reference",
           nullable=True),
    _field("error", pa.string(), "error code and message when the image or the expert failed", nullable=True),
    _field("path_bytes", pa.binary(), "the exact bytes of `path` when they are not valid UTF-8 (`path` then spells "
           "each odd byte as \\xNN)", nullable=True),
])
OUTCOME_COLUMNS = tuple(OUTCOME_SCHEMA.names)
# Nullable columns added after tables were first written; older tables read with them null.
COLUMNS_ADDED_LATER = ("mask_file", "path_bytes")
_TEXT_COLUMNS = [field.name for field in OUTCOME_SCHEMA if field.type == pa.string()]


class OutcomeTableError(UserError, ValueError):
    pass


def schema_markdown() -> str:
    """The schema as a Markdown table, for the README and `coe bench schema`."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for field in OUTCOME_SCHEMA:
        kind = f"{field.type}{'' if not field.nullable else ', nullable'}"
        lines.append(f"| `{field.name}` | {kind} | {field.metadata[b'doc'].decode()} |")
    return "\n".join(lines)


def _exact_bytes(name: str) -> bytes | None:
    return None if is_utf8(name) else os.fsencode(name)


def write_outcomes(rows: Sequence[dict] | pd.DataFrame, path: Path) -> None:
    """Write through a temporary file and an atomic rename: a killed run never leaves half a table.
    Text is written as valid UTF-8 (Parquet strings must be), a file name that is not with its exact
    bytes beside it, as `read_outcomes` restores it."""
    if isinstance(rows, pd.DataFrame):
        frame = rows.copy()
        known = frame["path_bytes"] if "path_bytes" in frame else [None] * len(frame)
        frame["path_bytes"] = [
            exact if isinstance(exact, bytes) else _exact_bytes(name) for name, exact in zip(frame["path"], known)
        ]
        for column in _TEXT_COLUMNS:
            frame[column] = [readable(value) if isinstance(value, str) else value for value in frame[column]]
        table = pa.Table.from_pandas(frame, schema=OUTCOME_SCHEMA, preserve_index=False)
    else:
        written = [
            {**{key: readable(value) if isinstance(value, str) else value for key, value in row.items()},
             "path_bytes": _exact_bytes(row["path"])}
            for row in rows
        ]
        table = pa.Table.from_pylist(written, schema=OUTCOME_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    pq.write_table(table, partial)
    partial.replace(path)


def read_outcomes(paths: Sequence[Path]) -> pd.DataFrame:
    """One frame from one or more outcome tables; a file that is not one says what it lacks."""
    frames = []
    for path in paths:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise OutcomeTableError(f"{path}: not a readable Parquet outcome table: {error}") from None
        missing = [field for field in OUTCOME_SCHEMA if field.name not in table.column_names]
        required = [field.name for field in missing if field.name not in COLUMNS_ADDED_LATER]
        if required:
            raise OutcomeTableError(f"{path}: not an outcome table; missing columns {required}")
        for field in missing:  # unknown when the table was written: null
            table = table.append_column(field, pa.nulls(len(table), field.type))
        frames.append(table.select(list(OUTCOME_COLUMNS)).cast(OUTCOME_SCHEMA).to_pandas())
    if not frames:
        raise OutcomeTableError("no outcome table given")
    frame = pd.concat(frames, ignore_index=True)
    return frame


def image_file(path: str, path_bytes: bytes | None) -> str:
    """The file an outcome row's image is in. A frame keeps `path` as text (pandas' strings must
    be valid UTF-8) and, for a name that is not, its exact bytes in `path_bytes`."""
    return os.fsdecode(path_bytes) if isinstance(path_bytes, bytes) else path


SAMPLE_KEY = ["benchmark", "image_id", "perturbation"]


@dataclass
class OutcomeMatrix:
    """Outcomes pivoted to one row per sample (benchmark, image, perturbation) and one column per
    expert: what routers are trained and judged on."""

    samples: pd.DataFrame  # SAMPLE_KEY + split, path, path_bytes, label, subject, generator
    experts: list[str]
    p_fake: np.ndarray  # (n, k) raw P(fake); NaN where the expert failed
    latency_ms: np.ndarray  # (n, k)

    @property
    def is_fake(self) -> np.ndarray:
        return (self.samples["label"] == "fake").to_numpy(dtype=int)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, experts: Sequence[str]) -> OutcomeMatrix:
        """Keeps the samples every expert was run on; an expert with no outcomes at all is an error."""
        absent = [name for name in experts if name not in set(frame["expert"])]
        if absent:
            raise OutcomeTableError(
                f"the outcome tables hold no outcomes of expert(s) {absent} (they hold {sorted(set(frame['expert']))}); "
                f"run `coe bench run` with those experts and pass its outcomes.parquet too"
            )
        frame = frame[frame["expert"].isin(experts)].drop_duplicates([*SAMPLE_KEY, "expert"])
        if "path_bytes" not in frame:  # a frame made by hand rather than read from a table
            frame = frame.assign(path_bytes=None)
        wide_p = frame.pivot(index=SAMPLE_KEY, columns="expert", values="p_fake")
        complete = frame.groupby(SAMPLE_KEY)["expert"].nunique() == len(experts)
        keys = complete[complete].index
        samples = (
            frame.drop_duplicates(SAMPLE_KEY)
            .set_index(SAMPLE_KEY)
            .loc[keys, ["split", "path", "path_bytes", "label", "subject", "generator"]]
            .reset_index()
        )
        latency = frame.pivot(index=SAMPLE_KEY, columns="expert", values="latency_ms")
        return cls(
            samples=samples,
            experts=list(experts),
            p_fake=wide_p.loc[keys, list(experts)].to_numpy(dtype=float),
            latency_ms=latency.loc[keys, list(experts)].to_numpy(dtype=float),
        )

    def take(self, rows: np.ndarray) -> OutcomeMatrix:
        return OutcomeMatrix(
            samples=self.samples.iloc[rows].reset_index(drop=True), experts=self.experts,
            p_fake=self.p_fake[rows], latency_ms=self.latency_ms[rows],
        )


class SplitSpec(BaseModel):
    """Which samples train a router and which judge it. Every image (by its sha256) lands on one
    side only, whatever its perturbations or the benchmarks that list it.

    Base sides: the benchmark's own split names when given; else whole benchmarks (`test_benchmarks`);
    else a deterministic share of images by hash (`holdout`). Out-of-distribution: fakes of
    `test_generators` are kept off the training side and are the only fakes on the test side."""

    model_config = ConfigDict(extra="forbid")
    train_splits: list[str] = []
    test_splits: list[str] = []
    test_benchmarks: list[str] = []
    test_generators: list[str] = []
    holdout: float = Field(default=0.3, gt=0.0, lt=1.0)
    seed: int = 0

    @property
    def out_of_distribution(self) -> bool:
        return bool(self.test_generators or self.test_benchmarks)


def _hash_share(image_ids: pd.Series, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per image, fixed by the image's hash and the seed."""
    return np.array([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:12], 16) / 16**12 for i in image_ids])


def split_samples(samples: pd.DataFrame, spec: SplitSpec) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, test) over the samples."""
    split, benchmark = samples["split"], samples["benchmark"]
    if spec.train_splits or spec.test_splits:
        train = split.isin(spec.train_splits).to_numpy(copy=True)
        test = split.isin(spec.test_splits).to_numpy(copy=True)
        if spec.test_benchmarks:
            train &= ~benchmark.isin(spec.test_benchmarks).to_numpy()
            test &= benchmark.isin(spec.test_benchmarks).to_numpy()
    elif spec.test_benchmarks:
        test = benchmark.isin(spec.test_benchmarks).to_numpy(copy=True)
        train = ~test
    else:
        test = _hash_share(samples["image_id"], spec.seed) < spec.holdout
        train = ~test
    if spec.test_generators:
        fake = (samples["label"] == "fake").to_numpy()
        held_out = samples["generator"].isin(spec.test_generators).to_numpy()
        train &= ~(fake & held_out)
        test &= ~fake | held_out
    train &= ~samples["image_id"].isin(samples.loc[test, "image_id"]).to_numpy()
    return train, test

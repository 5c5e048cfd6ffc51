"""`coe route` as a Python API: ingest -> decode (and read what each file says about its origin from
the same bytes) -> CLIP features -> router -> experts -> merger -> (localiser for the verdicts that
want one) -> ledger, chunk by chunk, so that memory stays flat and an interrupted run resumes. An
image whose file carries a proof of origin (a trusted signed manifest) is settled there: it is
neither embedded, nor routed, nor judged by a pixel expert."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import closing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from rich.console import Console

from coe.config import CoeConfig, load_expert_card
from coe.core.console import plain_console, progress_bar, show
from coe.core.errors import UserError
from coe.core.imaging import DecodedImage, decode_image_bytes, decode_or_error, read_regular_file
from coe.core.masks import save_masks
from coe.core.records import ErrorCode, ErrorInfo, ExpertOutput, Localization, Provenance, RoutingDecision, Verdict
from coe.core.thumbnails import write_thumbnail
from coe.ingest import IngestItem, discover
from coe.ledger import RUN_FILE, Ledger, check_run_identity, finished_earlier, record_request
from coe.merger import Merger
from coe.models import ExpertPool, open_feature_cache, routing_features
from coe.reports.run_report import write_run_report
from coe.results import RunSummary, summarize, write_results
from experts.base import FileExpert, Localizer, create_expert, localize_each, predict_each
from router.features import FeatureCache, RoutingFeatures, embed_with_cache


class PipelineError(UserError, RuntimeError):
    """A problem with the whole run (configuration, models), as opposed to one bad image."""


class LearnedRouting:
    """CLIP features (cached on disk) -> the trained router's decisions. `features` replaces the
    in-process extractor (e.g. by one served elsewhere) with anything of the same interface."""

    def __init__(
        self, config: CoeConfig, pool: ExpertPool, say: Callable[[str], None], features: RoutingFeatures | None = None
    ):
        self.settings = config.router
        self.extractor = features or routing_features(config, pool.cards)
        from coe.defaults import load_configured_router  # the benchmark machinery, only for a learned router

        self.router, self.meta = load_configured_router(config, pool, self.extractor, say)
        self.cache: FeatureCache = open_feature_cache(config)
        self.n_embedded = 0

    @property
    def identity(self) -> dict:
        return {"router": self.router_label, "features": self.extractor.extractor_id,
                "on_abstain": self.settings.model_dump(include={"on_abstain", "escalate_to"})}

    @property
    def router_label(self) -> str:
        return f"{self.meta.router_id}/v{self.meta.version}"

    def decide(self, ids: list[str], pixels: list[np.ndarray]) -> tuple[list[RoutingDecision], dict[str, float]]:
        start = time.perf_counter()
        features, embedded = embed_with_cache(self.extractor, self.cache, ids, pixels)
        self.n_embedded += embedded
        middle = time.perf_counter()
        decisions = self.router.decide(features, self.router_label)
        if self.settings.on_abstain == "escalate":
            for decision in decisions:
                if decision.abstained:
                    decision.escalated_to = [r.expert for r in decision.ranked[1 : self.settings.escalate_to]]
                    decision.reason += f"; escalated to {', '.join(decision.escalated_to)}"
        end = time.perf_counter()
        per_image = 1000.0 / max(len(ids), 1)
        return decisions, {"features": (middle - start) * per_image, "routing": (end - middle) * per_image}

    def close(self) -> None:
        self.cache.close()


class FixedRouting:
    """Every image to one named expert: no CLIP, no router (triage-only runs)."""

    def __init__(self, expert: str):
        self.expert = expert
        self.extractor = None
        self.meta = None
        self.n_embedded = 0

    @property
    def identity(self) -> dict:
        return {"router": f"fixed:{self.expert}", "features": None}

    def decide(self, ids: list[str], pixels: list[np.ndarray]) -> tuple[list[RoutingDecision], dict[str, float]]:
        decisions = [
            RoutingDecision(
                router_id=f"fixed:{self.expert}", level="fixed", chosen=self.expert, reason="expert fixed by --expert"
            )
            for _ in ids
        ]
        return decisions, {}

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class DecodedFile(DecodedImage):
    """A decoded image with what its file says about its origin, read from the same bytes."""

    provenance: Provenance | None = None


def _decode(item: IngestItem, pipeline: RoutePipeline) -> DecodedImage | ErrorInfo:
    if item.error is not None:
        return item.error
    return decode_or_error(item.path, lambda: pipeline.read(item.path))


def load_provenance_reader(config: CoeConfig) -> FileExpert | None:
    name = config.provenance.expert
    if name is None:
        return None
    card = load_expert_card(config, name)
    reader = create_expert(card)
    if not isinstance(reader, FileExpert):
        raise PipelineError(f"provenance.expert: {name!r} ({card.family}) judges pixels; it does not read files")
    return reader


def read_provenance(reader: FileExpert, data: bytes) -> Provenance:
    """A reader never raises by contract; one that does anyway costs only its record's error."""
    started = time.perf_counter()
    try:
        return reader.inspect(data)
    except Exception as error:
        return Provenance(error=f"{reader.name}: {type(error).__name__}: {error}",
                          latency_ms=1000.0 * (time.perf_counter() - started))


def load_localizer(config: CoeConfig) -> Localizer | None:
    name = config.localize.expert
    if name is None:
        return None
    card = load_expert_card(config, name)
    localizer = ExpertPool(config, {name: card}).get(name)
    if not isinstance(localizer, Localizer):
        raise PipelineError(f"localize.expert: {name!r} ({card.family}) does not localise artifacts")
    return localizer


class RoutePipeline:
    """`run_dir`: where masks (masks/<image id>/...) and the report's thumbnails are written;
    without one, masks stay attached in memory to the verdicts' outputs and no thumbnail is made.
    `pool`, `features` and `localizer` replace the in-process experts, feature extractor and
    localiser with others of the same interface (served ones, for instance); by default they are
    built from `config`."""

    def __init__(
        self,
        config: CoeConfig,
        expert: str | None = None,
        say: Callable[[str], None] = print,
        run_dir: Path | None = None,
        pool: ExpertPool | None = None,
        features: RoutingFeatures | None = None,
        localizer: Localizer | None = None,
    ):
        self.config = config
        self.run_dir = run_dir
        self.pool = pool or ExpertPool(config)
        self.localizer = localizer or load_localizer(config)
        self.provenance = load_provenance_reader(config)
        if expert is not None and expert not in self.pool.cards:
            raise PipelineError(f"--expert {expert!r} is not a configured expert ({', '.join(self.pool.cards)})")
        self.routing = FixedRouting(expert) if expert else LearnedRouting(config, self.pool, say, features)
        calibration = self.routing.meta.calibration if self.routing.meta else {}
        self.merger = Merger(config.merger, calibration)
        # Loads every expert now, so that model loading is setup time, not routing time.
        self.identity = {
            **self.routing.identity,
            "experts": self.pool.identities(),
            "merger": config.merger.model_dump(),
            "provenance": {"card": self.provenance.name, "identity": self.provenance.identity} if self.provenance else None,
            "localize": {
                "expert": self.localizer.identity if self.localizer else None,
                "verdicts": config.localize.verdicts,
            },
            "ingest": config.ingest.model_dump(),
        }

    def read(self, path: str) -> DecodedImage:
        """The image file at `path`, decoded, with what it says about its origin; raises ImageDecodeError."""
        return self.decode(read_regular_file(path, self.config.ingest), path)

    def decode(self, data: bytes, source: str) -> DecodedImage:
        """An image file held in memory, decoded, and read for provenance from the same bytes when
        provenance is on (then a DecodedFile); raises ImageDecodeError."""
        image = decode_image_bytes(data, source, self.config.ingest)
        if self.provenance is None:
            return image
        return DecodedFile(record=image.record, pixels=image.pixels, provenance=read_provenance(self.provenance, data))

    def analyse(self, images: list[tuple[str, DecodedImage]]) -> list[Verdict]:
        """Route and judge decoded, distinct images; one verdict each, in order. Images a proof of
        provenance settles are neither embedded nor routed nor judged."""
        if not images:
            return []
        if self.run_dir is not None:
            for _, image in images:
                write_thumbnail(image.pixels, self.run_dir, image.record.id)
        provenance = [image.provenance if isinstance(image, DecodedFile) else None for _, image in images]
        settled = {i: merged for i, record in enumerate(provenance) if (merged := self.merger.settle(record))}
        routed = [i for i in range(len(images)) if i not in settled]
        verdicts = dict(zip(routed, self._route([images[i] for i in routed], [provenance[i] for i in routed]),
                            strict=True))
        for i, merged in settled.items():
            path, image = images[i]
            verdicts[i] = Verdict(
                path=path, image_id=image.record.id, image=image.record, provenance=provenance[i],
                timings_ms={"provenance": provenance[i].latency_ms}, **merged.model_dump(),
            )
        return [verdicts[i] for i in range(len(images))]

    def _route(self, images: list[tuple[str, DecodedImage]], provenance: list[Provenance | None]) -> list[Verdict]:
        if not images:
            return []
        ids = [image.record.id for _, image in images]
        pixels = [image.pixels for _, image in images]
        features_id = self.routing.extractor.extractor_id if self.routing.extractor else None
        random_weights = bool(self.routing.extractor and self.routing.extractor.random_weights)

        def row(index: int, **fields) -> Verdict:
            path, image = images[index]
            return Verdict(
                path=path, image_id=image.record.id, image=image.record, features=features_id,
                random_weights=random_weights, provenance=provenance[index], **fields,
            )

        try:
            decisions, timings = self.routing.decide(ids, pixels)
        except Exception as error:
            code = ErrorCode.FEATURES_FAILED if features_id else ErrorCode.ROUTING_FAILED
            failure = ErrorInfo(code=code, message=f"{type(error).__name__}: {error}")
            return [row(i, error=failure) for i in range(len(images))]
        outputs = self._judge(decisions, pixels)
        merged = {}
        for i, (decision, result) in enumerate(zip(decisions, outputs, strict=True)):
            if not isinstance(result, ErrorInfo):
                self._keep_masks(result, ids[i])
                merged[i] = self.merger.merge(decision, result, provenance=provenance[i])
        localized = self._localize(merged, outputs, pixels)
        verdicts: list[Verdict] = []
        for i, (decision, result) in enumerate(zip(decisions, outputs, strict=True)):
            if isinstance(result, ErrorInfo):
                verdicts.append(row(i, routing=decision, error=result))
                continue
            localization = localized.get(i)
            if isinstance(localization, ErrorInfo):
                merged[i].reason += f"; localising with {self.config.localize.expert} failed: {localization.message}"
                localization = None
            elif localization is not None:
                self._keep_masks([localization], ids[i])
                merged[i] = self.merger.merge(decision, result, localization, provenance[i])
            expert_ms = sum(output.latency_ms for output in result) + (localization.latency_ms if localization else 0.0)
            read_ms = {"provenance": provenance[i].latency_ms} if provenance[i] else {}
            verdicts.append(
                row(i, routing=decision, expert_outputs=result, localization=localization,
                    timings_ms={**read_ms, **timings, "expert": expert_ms}, **merged[i].model_dump())
            )
        return verdicts

    def _keep_masks(self, evidence: Sequence[Localization], image_id: str) -> None:
        if self.run_dir is not None:
            for item in evidence:
                save_masks(item, self.run_dir, image_id[:16])

    def _localize(
        self, merged: dict, outputs: list, pixels: list[np.ndarray]
    ) -> dict[int, Localization | ErrorInfo]:
        """Ask the localiser about the images whose verdict wants it, unless it already judged them."""
        if self.localizer is None:
            return {}
        wanted = [
            i for i, verdict in merged.items()
            if verdict.label in self.config.localize.verdicts
            and self.localizer.name not in {output.expert for output in outputs[i]}
        ]
        found = localize_each(self.localizer, [pixels[i] for i in wanted]) if wanted else []
        return dict(zip(wanted, found, strict=True))

    def _judge(
        self, decisions: list[RoutingDecision], pixels: list[np.ndarray]
    ) -> list[list[ExpertOutput] | ErrorInfo]:
        """Run each expert over the images sent to it in one batch: the chosen expert's, then those of
        escalated images. When a batch fails, its images are retried one by one, and an image its
        chosen expert cannot judge goes to the next-ranked expert, so one pathological image costs
        at most its own row. An escalated expert that fails is left out of the merge."""
        results: list = [None] * len(pixels)
        for expert_name, members in _groups(decision.chosen for decision in decisions).items():
            try:
                batch = self.pool.get(expert_name).predict([pixels[i] for i in members])
            except Exception:
                batch = [self._judge_one(decisions[i], pixels[i]) for i in members]
            for i, output in zip(members, batch, strict=True):
                results[i] = output if isinstance(output, ErrorInfo) else [output]
        escalations = [(i, name) for i, d in enumerate(decisions) for name in d.escalated_to]
        for expert_name, members in _groups(name for _, name in escalations).items():
            images = [escalations[m][0] for m in members]
            outputs = predict_each(self.pool.get(expert_name), [pixels[i] for i in images])
            for i, output in zip(images, outputs, strict=True):
                if isinstance(results[i], list) and isinstance(output, ExpertOutput):
                    results[i].append(output)
        return results

    def _judge_one(self, decision: RoutingDecision, image: np.ndarray) -> ExpertOutput | ErrorInfo:
        candidates = [decision.chosen] + [r.expert for r in decision.ranked if r.expert != decision.chosen]
        failures = []
        for expert_name in candidates:
            try:
                output = self.pool.get(expert_name).predict([image])[0]
            except Exception as error:
                failures.append(f"{expert_name}: {type(error).__name__}: {error}")
                continue
            if failures:
                decision.reason += f"; fell back to {expert_name} after {'; '.join(failures)}"
            return output
        return ErrorInfo(code=ErrorCode.EXPERT_FAILED, message=" | ".join(failures))

    def close(self) -> None:
        self.routing.close()


def _groups(names) -> dict[str, list[int]]:
    """Positions by expert name, in first-seen order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, name in enumerate(names):
        groups[name].append(index)
    return groups


def route(
    config: CoeConfig,
    inputs: Sequence[str | Path],
    out_dir: Path,
    manifests: Sequence[str | Path] = (),
    expert: str | None = None,
    restart: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    ray_address: str | None = None,
) -> RunSummary:
    """`ray_address` (an address, `auto` for a running cluster, `local` to start one here) runs the
    chunks on Ray workers, each with its own pipeline; the ledger, resume and results stay here."""
    console = console or plain_console(stderr=True)
    started = time.perf_counter()
    items = discover(inputs, manifests)
    if not items:
        # Nothing is written: an empty drop folder must not replace the results of an earlier run.
        return summarize([], out_dir, seconds=time.perf_counter() - started, setup_seconds=0.0, done_before=0,
                         embedded=0)
    request = {"expert": expert, "configuration": config.model_dump(mode="json", exclude={"run"})}
    finished = None if restart else finished_earlier(out_dir, request, [item.path for item in items])
    if finished is not None:
        show(console, (
            f"every one of the {len(items)} paths was judged by an earlier attempt in {out_dir} (its models are "
            f"recorded in {out_dir / RUN_FILE}); nothing to redo, so no model is loaded (--restart judges them again)"
        ))
        return _finish(out_dir, items, finished, console, show_progress, config, started, 0.0, 0.0)
    warn = lambda message: show(console, message, "yellow")  # noqa: E731
    first_use_seconds = 0.0
    if expert is None:
        from coe.defaults import ensure_default_models  # the benchmark machinery, only when routing

        building = time.perf_counter()
        if ensure_default_models(config, warn):
            first_use_seconds = time.perf_counter() - building
    if ray_address is not None:
        from coe.ray_route import RayChunks

        executor = RayChunks(config, expert, out_dir, ray_address, warn)
    else:
        executor = LocalChunks(RoutePipeline(config, expert, say=warn, run_dir=out_dir), config)
    setup_seconds = time.perf_counter() - started - first_use_seconds
    try:
        check_run_identity(out_dir, executor.identity, restart)
        record_request(out_dir, request)
        return _finish(out_dir, items, executor, console, show_progress, config, started, setup_seconds,
                       first_use_seconds)
    finally:
        executor.close()


def _finish(
    out_dir: Path, items: Sequence[IngestItem], work: ChunkExecutor | list[Verdict], console: Console,
    show_progress: bool, config: CoeConfig, started: float, setup_seconds: float, first_use_seconds: float,
) -> RunSummary:
    """Judge what the ledger lacks with `work` (or take `work`, the verdicts of a finished run), then
    write the results and the report."""
    if isinstance(work, list):
        results, done_before, executor = work, len(items), None
    else:
        executor = work
        with closing(Ledger(out_dir)) as ledger:
            results, done_before = _route_items(items, executor, ledger, config, console, show_progress)
    write_results(out_dir, results)
    summary = summarize(
        results, out_dir, seconds=time.perf_counter() - started, setup_seconds=setup_seconds,
        done_before=done_before, embedded=executor.n_embedded() if executor else 0,
        first_use_seconds=first_use_seconds,
    )
    subjects = {item.path: item.meta["subject"] for item in items if item.meta.get("subject")}
    write_run_report(out_dir, results, summary, subjects)
    return summary


class LocalChunks:
    """Chunks analysed one after another in this process."""

    def __init__(self, pipeline: RoutePipeline, config: CoeConfig):
        self.pipeline = pipeline
        self.config = config
        self.identity = pipeline.identity

    def analyse(self, chunks: Sequence[Sequence[IngestItem]], ledger: Ledger) -> Iterator[list[Verdict]]:
        """Lazily, so that each chunk sees the images the ledger got from the chunks before it."""
        with ThreadPoolExecutor(self.config.run.decode_workers) as decoders:
            for chunk in chunks:
                yield analyse_chunk(chunk, self.pipeline, ledger.by_image, decoders)

    def n_embedded(self) -> int:
        return self.pipeline.routing.n_embedded

    def close(self) -> None:
        self.pipeline.close()


class ChunkExecutor(Protocol):
    identity: dict

    def analyse(self, chunks: Sequence[Sequence[IngestItem]], ledger: Ledger) -> Iterator[list[Verdict]]: ...

    def n_embedded(self) -> int: ...

    def close(self) -> None: ...


def _route_items(
    items: Sequence[IngestItem], executor: ChunkExecutor, ledger: Ledger, config: CoeConfig, console: Console,
    show_progress: bool,
) -> tuple[list[Verdict], int]:
    """Process what the ledger does not hold yet; one verdict per item, and how many were done before."""
    done_before = sum(item.path in ledger for item in items)
    todo = [item for item in items if item.path not in ledger]
    if done_before:
        show(console, f"resuming: {done_before} of {len(items)} paths were done by an earlier attempt")
    progress = progress_bar(console, "routing", show_progress)
    chunks = [todo[start : start + config.run.chunk_size] for start in range(0, len(todo), config.run.chunk_size)]
    with progress:
        task = progress.add_task("route", total=len(items), completed=done_before)
        for chunk, rows in zip(chunks, executor.analyse(chunks, ledger), strict=True):
            ledger.append(_as_duplicates_of_earlier_chunks(rows, ledger))
            progress.advance(task, len(chunk))
    return [ledger.verdicts[item.path] for item in items], done_before


def _as_duplicates_of_earlier_chunks(rows: list[Verdict], ledger: Ledger) -> list[Verdict]:
    """A chunk analysed without the ledger at hand (on a Ray worker) may judge again an image an
    earlier chunk judged; it is reported, as in a local run, as a duplicate of the first path."""
    adopted = []
    for row in rows:
        original = ledger.by_image.get(row.image_id) if row.image_id and row.error is None else None
        if original is not None and original.path != row.path and row.duplicate_of is None:
            row = original.model_copy(update={"path": row.path, "duplicate_of": original.path, "image": row.image})
        adopted.append(row)
    return adopted


def analyse_chunk(
    chunk: Sequence[IngestItem], pipeline: RoutePipeline, known: dict[str, Verdict], decoders: ThreadPoolExecutor,
) -> list[Verdict]:
    """One verdict per item, its files decoded (and read for provenance) in parallel (see `judge_decoded`)."""
    start = time.perf_counter()
    decoded = list(decoders.map(lambda item: _decode(item, pipeline), chunk))
    decode_ms = 1000.0 * (time.perf_counter() - start) / max(len(chunk), 1)
    rows = judge_decoded([(item.path, result) for item, result in zip(chunk, decoded, strict=True)], pipeline, known)
    for row in rows:
        if row.error is None and row.duplicate_of is None:
            row.timings_ms["decode"] = decode_ms
    return rows


def judge_decoded(
    named: Sequence[tuple[str, DecodedImage | ErrorInfo]], pipeline: RoutePipeline, known: dict[str, Verdict]
) -> list[Verdict]:
    """One verdict per (path, decoded image or decoding error), in order: each distinct image analysed
    once; an image in `known` (image id -> verdict) or met earlier reported as a duplicate of the
    first path. Duplicates are shallow copies, so masks attached in memory stay shared."""
    fresh: dict[str, tuple[str, DecodedImage]] = {}
    for path, result in named:
        if isinstance(result, DecodedImage) and result.record.id not in known:
            fresh.setdefault(result.record.id, (path, result))
    analysed = {verdict.image_id: verdict for verdict in pipeline.analyse(list(fresh.values()))}
    rows = []
    for path, result in named:
        if isinstance(result, ErrorInfo):
            rows.append(Verdict(path=path, error=result))
            continue
        original = analysed.get(result.record.id) or known[result.record.id]
        if original.path == path:
            rows.append(original)
        else:
            rows.append(original.model_copy(update={"path": path, "duplicate_of": original.path, "image": result.record}))
    return rows

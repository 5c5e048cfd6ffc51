"""`coe serve`: one HTTP endpoint on Ray Serve over the expert pool.

Deployments: a FastAPI ingress holding the router and the merger (a RoutePipeline whose features,
experts and localiser are handles to the other deployments), a features deployment (CLIP plus
descriptors, batched across requests), and one deployment per enabled expert (and the localiser),
scheduled with the resources its card asks for, batched across requests.

`serve run configs/serve.yaml` (or `serve run coe.serve:build_app`) and `coe serve` build the same
application from the same settings (`ServeArgs`)."""

import asyncio
import base64
import io
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.exceptions import HTTPException

from coe.config import CoeConfig, ConfigError, load_config, load_expert_card, load_expert_cards
from coe.core.errors import UserError
from coe.core.imaging import DecodedImage, ImageDecodeError
from coe.core.masks import MASKS_DIR
from coe.core.records import ErrorCode, ErrorInfo, ExpertOutput, Localization, Verdict
from coe.core.yaml_files import YamlFileError, read_yaml_mapping, validation_problems
from coe.defaults import DEFAULT_ROUTER
from coe.models import ExpertPool, routing_features
from coe.pipeline import RoutePipeline, judge_decoded
from coe.ray_route import ray_session
from experts.base import (
    DeviceParams,
    ExpertCard,
    FileExpert,
    Resources,
    create_expert,
    localize_each,
    predict_each,
)
from router.artifact import has_readable_artifact

logger = logging.getLogger("coe.serve")

API_KEY_ENV = "COE_API_KEYS"
MASK_STORE = "serve-masks"
MASK_KEY = re.compile(r"^[0-9a-f]{16}$")  # what coe.core.masks names an image's folder
MASK_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.png$")  # no separators, no ".."
MaskMode = Literal["inline", "link", "none"]


class ServeError(UserError, RayServeException):
    """The application cannot be built or started as configured. A RayServeException, so that
    `serve run` reports its message alone rather than a traceback."""


# --------------------------------------------------------------------------------------- settings


class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchSettings(StrictSettings):
    max_batch_size: int = Field(
        default=16, ge=1, description="images embedded or judged together, across requests"
    )
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, description="how long a batch waits to fill up")


class ExpertScaling(StrictSettings):
    min_replicas: int = Field(default=1, ge=1)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(
        default=16.0, gt=0, description="per replica, before Serve adds one"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "ExpertScaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        return self


class ServeSettings(StrictSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: list[SecretStr] = Field(
        default=[], description=f"accepted keys; env {API_KEY_ENV} (comma-separated) adds more"
    )
    require_api_key: Literal["auto"] | bool = Field(
        default="auto", description="auto: required whenever `host` is not a loopback address"
    )
    max_upload_bytes: int = Field(default=64 * 2**20, gt=0, description="the whole request body")
    max_buffered_bytes: int = Field(
        default=256 * 2**20,
        gt=0,
        description="request bodies an ingress replica holds at once, across requests; a request "
        "that would go over is answered 503 busy",
    )
    max_images_per_request: int = Field(default=64, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    masks: MaskMode = Field(
        default="inline",
        description="inline: masks as base64 PNG data URLs; link: written to mask_store, served at "
        "/v1/masks/...; none: left out",
    )
    mask_store: Path | None = Field(
        default=None, description="where masks=link writes mask PNGs (default: serve-masks in COE home); never pruned"
    )
    max_ongoing_requests: int = Field(
        default=100, ge=1, description="per replica; Serve's default of 5 collapses under concurrent clients"
    )
    pipeline_threads: int = Field(
        default=8, ge=1, description="requests the ingress analyses at the same time"
    )
    ingress_num_cpus: float = Field(
        default=0.5, ge=0, description="decoding and routing happen in the ingress"
    )
    features_num_cpus: float = Field(default=1.0, ge=0)
    features_batch: BatchSettings = BatchSettings()
    experts_batch: BatchSettings = BatchSettings()
    experts_autoscaling: ExpertScaling = ExpertScaling()

    @model_validator(mode="after")
    def _keys_from_environment(self) -> "ServeSettings":
        known = {key.get_secret_value() for key in self.api_keys}
        extra = [key.strip() for key in os.environ.get(API_KEY_ENV, "").split(",") if key.strip()]
        self.api_keys += [SecretStr(key) for key in extra if key not in known]
        return self

    @model_validator(mode="after")
    def _one_upload_fits(self) -> "ServeSettings":
        if self.max_buffered_bytes < self.max_upload_bytes:
            raise ValueError("max_buffered_bytes must be at least max_upload_bytes")
        return self

    @property
    def api_key_required(self) -> bool:
        if self.require_api_key == "auto":
            return not _is_loopback(self.host)
        return self.require_api_key

    def check_api_key(self) -> None:
        """Refuses, in one line, an endpoint on `host` that needs a key and has none. Checked where
        the host is known for sure (the builder asks Serve), not when the settings are read."""
        if self.api_key_required and not self.api_keys:
            raise ServeError(
                f"refusing to serve on {self.host!r} without an API key (require_api_key: {self.require_api_key}): "
                f"set serve.api_keys or {API_KEY_ENV}, or bind a loopback address"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # Python 3.11 does not count ::ffff:127.0.0.1 (IPv4 loopback in an IPv6 socket) as loopback.
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


class ServeArgs(StrictSettings):
    """The application builder's arguments, as in the `args:` of a Serve config file."""

    config: Path | None = Field(
        default=None, description="a coe configuration file over configs/defaults.yaml"
    )
    set: list[str] = Field(default=[], description="KEY=VALUE overrides, as `coe --set`")
    serve: ServeSettings = ServeSettings()


def load_serve_args(path: Path, host: str | None = None, port: int | None = None) -> ServeArgs:
    """The `args:` of the first application of a Serve config file (configs/serve.yaml); its
    `http_options` host and port, where given, win over `serve.host` / `serve.port`, and `host` and
    `port`, where given, over both."""
    try:
        document = read_yaml_mapping(path)
    except YamlFileError as error:
        raise ConfigError(str(error)) from None
    try:
        applications = document.get("applications") or [{}]
        args = dict(applications[0].get("args") or {})
        http = {
            key: value
            for key, value in (document.get("http_options") or {}).items()
            if key in {"host", "port"}
        }
        given = {key: value for key, value in {"host": host, "port": port}.items() if value is not None}
        args["serve"] = {**(args.get("serve") or {}), **http, **given}
        return ServeArgs.model_validate(args)
    except AttributeError as error:  # a section that is not a mapping (or a list of them)
        raise ConfigError(f"{path}: {error}") from error
    except ValidationError as error:
        raise ConfigError("\n".join(validation_problems(error, f"{path}: applications[0].args"))) from None


# ------------------------------------------------------------------------------------------ models


class ApiErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ApiErrorBody


class ServedVerdict(Verdict):
    masks: dict[str, str] = Field(
        default={},
        description="mask name (expert.union, expert.NN.category) -> a PNG data URL (masks=inline) or the "
        "mask's URL path (masks=link)",
    )


class AnalyzeResponse(BaseModel):
    verdicts: list[ServedVerdict]


class ExpertInfo(BaseModel):
    name: str
    family: str
    capabilities: list[str]
    cost: float
    resources: Resources
    identity: str


class ExpertsResponse(BaseModel):
    experts: list[ExpertInfo]
    localizer: ExpertInfo | None = None
    provenance: ExpertInfo | None = Field(
        default=None, description="the reader of what each file says about its origin; it runs in the ingress, on "
        "the uploaded bytes, not as a deployment of its own"
    )


class Health(BaseModel):
    status: str
    deployments: dict[str, str] = {}


class ApiError(HTTPException):
    """An HTTP error with a stable code. An HTTPException, so that FastAPI passes it through when it
    is raised while a request body is being read."""

    def __init__(self, status_code: int, code: str, message: str):
        super().__init__(status_code=status_code, detail=message)
        self.code = code


CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "bad_request",
    504: "timeout",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 413, 422, 500, 504)
}


def error_json(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=ApiErrorBody(code=code, message=message)).model_dump(), status_code=status
    )


# --------------------------------------------------------------------------------- HTTP gatekeeper


class Gatekeeper:
    """Pure ASGI middleware in front of the routes: checks the API key and the body's size before
    any of the body is read (Content-Length), and counts it while it streams in. Bodies are held in
    memory until their request is answered, so the bytes of the requests in flight are bounded
    together: a request that would go over `max_buffered_bytes` is answered 503 busy."""

    # Probes and the API's description need no key; everything under /v1 does.
    OPEN_PATHS = {"/healthz", "/readyz", "/openapi.json"}

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.keys = {key.get_secret_value().encode() for key in settings.api_keys}
        self.require_api_key = settings.require_api_key
        self.required = settings.api_key_required
        self.max_bytes = settings.max_upload_bytes
        self.max_buffered = settings.max_buffered_bytes
        # Requests are served on one event loop, so reserving is check-and-add with no await between.
        self.buffered = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self._key_required(scope) and scope["path"] not in self.OPEN_PATHS and not self._authorized(headers):
            return await error_json(401, "unauthorized", "a valid API key is required (X-API-Key or Bearer)")(
                scope, receive, send
            )
        declared = headers.get(b"content-length", b"").decode()
        declared = int(declared) if declared.isdigit() else 0
        if declared > self.max_bytes:
            return await self._too_large(declared)(scope, receive, send)
        if not self._reserve(declared):
            return await self._busy()(scope, receive, send)
        reserved = declared
        received = 0

        async def counting_receive():
            nonlocal received, reserved
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ApiError(413, "payload_too_large", f"the upload exceeds {self.max_bytes} bytes")
            if received > reserved:  # no Content-Length, or a body longer than it said
                if not self._reserve(received - reserved):
                    raise self._busy_error()
                reserved = received
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.buffered -= reserved

    def _key_required(self, scope) -> bool:
        # Whoever started Serve chose the address the proxy binds; a request that reached a
        # non-loopback address needs a key whatever the settings were told.
        server = scope.get("server")
        off_loopback = server is None or not _is_loopback(server[0])
        return self.required or (self.require_api_key == "auto" and off_loopback)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        key = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization", b"")
        if key is None and authorization[:7].lower() == b"bearer ":
            key = authorization[7:].strip()
        return key in self.keys

    def _reserve(self, size: int) -> bool:
        if self.buffered + size > self.max_buffered:
            return False
        self.buffered += size
        return True

    def _too_large(self, size: int) -> JSONResponse:
        return error_json(
            413, "payload_too_large", f"the upload has {size} bytes, over the limit of {self.max_bytes}"
        )

    def _busy_error(self) -> ApiError:
        return ApiError(
            503, "busy", f"the uploads in progress hold {self.buffered} of {self.max_buffered} bytes; retry later"
        )

    def _busy(self) -> JSONResponse:
        error = self._busy_error()
        return error_json(error.status_code, error.code, error.detail)


# ---------------------------------------------------------------------------- worker deployments


def bind_replica_grpc_to_node_address() -> None:
    """Ray Serve (2.60) starts each replica's inter-deployment gRPC server on [::]:0, every
    interface, and has no setting for it, while the other replicas reach it at the node's address.
    Called first in each replica's constructor, which Serve runs before it binds that server, so that
    it binds the node's address alone: loopback, on the cluster coe starts."""
    import ray
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    node = ray.util.get_node_ip_address()
    host = f"[{node}]" if ":" in node else node

    def on_node_address(server, address: str) -> int:
        wildcard, _, port = address.rpartition(":")
        return bind(server, f"{host}:{port}" if wildcard == "[::]" else address)

    replica.add_port_to_grpc_server = on_node_address


@serve.deployment(name="features")
class FeaturesDeployment:
    """CLIP plus descriptors, the router's input; images from concurrent requests embedded together."""

    def __init__(self, config: CoeConfig, batching: BatchSettings):
        bind_replica_grpc_to_node_address()
        self.features = routing_features(config, load_expert_cards(config))
        self.embed.set_max_batch_size(batching.max_batch_size)
        self.embed.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def describe(self) -> tuple[str, bool]:
        return self.features.extractor_id, self.features.random_weights

    @serve.batch
    async def embed(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # In a thread, so that health checks and queued calls are answered while torch works.
        return list(await asyncio.to_thread(self.features.embed, images))


@serve.deployment
class ExpertDeployment:
    """One expert (or the localiser), loaded once; images from concurrent requests judged together.
    An image the expert cannot judge costs only its own answer (an ErrorInfo)."""

    UNHEALTHY_AFTER_FAILED_BATCHES = 3

    def __init__(self, config: CoeConfig, card: ExpertCard, batching: BatchSettings):
        bind_replica_grpc_to_node_address()
        self.expert = ExpertPool(config, {card.name: card}).get(card.name)
        self.failed_batches_in_a_row = 0
        for method in (self.predict, self.localize):
            method.set_max_batch_size(batching.max_batch_size)
            method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    def identity(self) -> str:
        return self.expert.identity

    @serve.batch
    async def predict(self, images: list[np.ndarray]) -> list[ExpertOutput | ErrorInfo]:
        return self._count(await asyncio.to_thread(predict_each, self.expert, images))

    @serve.batch
    async def localize(self, images: list[np.ndarray]) -> list[Localization | ErrorInfo]:
        return self._count(await asyncio.to_thread(localize_each, self.expert, images))

    def _count(self, results: list) -> list:
        failed = all(isinstance(result, ErrorInfo) for result in results)
        self.failed_batches_in_a_row = self.failed_batches_in_a_row + 1 if failed else 0
        return results

    def check_health(self) -> None:
        # A replica whose every image fails, batch after batch, is broken (e.g. a lost device):
        # Serve replaces it.
        if self.failed_batches_in_a_row >= self.UNHEALTHY_AFTER_FAILED_BATCHES:
            raise RuntimeError(
                f"{self.expert.name}: the last {self.failed_batches_in_a_row} batches all failed"
            )


# ------------------------------------------------------------- remote stand-ins for the pipeline


class RemoteCallError(RuntimeError):
    pass


def _gather(responses: list, what: str) -> list:
    """Blocking results of deployment calls (called from the ingress' worker threads); an
    ErrorInfo among them fails the batch, so the pipeline retries its images one by one."""
    results = [response.result() for response in responses]
    failures = [result.message for result in results if isinstance(result, ErrorInfo)]
    if failures:
        raise RemoteCallError(f"{what}: {failures[0]}")
    return results


class RemoteExpert:
    """A served expert with the interface the pipeline expects of an in-process one."""

    def __init__(self, handle, card: ExpertCard, identity: str):
        self.handle = handle
        self.card = card
        self.identity = identity

    @property
    def name(self) -> str:
        return self.card.name

    def predict(self, images: Sequence[np.ndarray]) -> list[ExpertOutput]:
        return _gather([self.handle.predict.remote(image) for image in images], self.name)

    def localize(self, images: Sequence[np.ndarray]) -> list[Localization]:
        return _gather([self.handle.localize.remote(image) for image in images], self.name)


class RemotePool:
    """The served experts, as an ExpertPool. Their weights were checked before deploying, so none
    is untrained, and the deployments loaded them once."""

    def __init__(self, experts: dict[str, RemoteExpert]):
        self.experts = experts
        self.cards = {name: expert.card for name, expert in experts.items()}

    def get(self, name: str) -> RemoteExpert:
        return self.experts[name]

    def identities(self) -> dict[str, str]:
        return {name: expert.identity for name, expert in self.experts.items()}

    def untrained(self) -> list[str]:
        return []


class RemoteFeatures:
    """The served features, as a RoutingFeatures: one call per image, so the deployment batches
    images across requests."""

    def __init__(self, handle, extractor_id: str, random_weights: bool):
        self.handle = handle
        self.extractor_id = extractor_id
        self.random_weights = random_weights

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack(_gather([self.handle.embed.remote(image) for image in images], "features"))


# ----------------------------------------------------------------------------------------- ingress


def mask_data_url(mask: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def served_masks(verdict: Verdict, mode: MaskMode) -> dict[str, str]:
    """A verdict's masks, named as `coe route` names its files: PNG data URLs of the masks in memory
    (inline), or the URL paths of the files the pipeline wrote (link)."""
    if mode == "none":
        return {}
    evidence: list[Localization] = [
        *verdict.expert_outputs,
        *([verdict.localization] if verdict.localization else []),
    ]
    masks = {}
    for item in evidence:
        named = [(f"{item.expert}.{index:02d}.{artifact.category}", artifact.mask, artifact.mask_file)
                 for index, artifact in enumerate(item.artifacts)]
        named.append((f"{item.expert}.union", item.union_mask, item.union_mask_file))
        for name, mask, file in named:
            if mode == "inline" and mask is not None:
                masks[name] = mask_data_url(mask)
            elif mode == "link" and file is not None:
                masks[name] = f"/v1/{file}"
    return masks


def analyse_uploads(
    pipeline: RoutePipeline, uploads: list[tuple[str, bytes]], masks: MaskMode, mask_store: Path
) -> list[ServedVerdict]:
    """One verdict per upload, in order: bad files get their error code, identical files are
    analysed once and the later ones marked `duplicate_of` the first. What each file says about its
    origin is read from the uploaded bytes, as `coe route` reads it from the file."""
    decoded: list[tuple[str, DecodedImage | ErrorInfo]] = []
    for name, data in uploads:
        try:
            decoded.append((name, pipeline.decode(data, name)))
        except ImageDecodeError as error:
            decoded.append((name, error.error))
        except Exception as error:  # a decoder bug must cost one upload, not the request
            decoded.append(
                (
                    name,
                    ErrorInfo(
                        code=ErrorCode.INTERNAL_ERROR, message=f"{name}: {type(error).__name__}: {error}"
                    ),
                )
            )
    pipeline.run_dir = mask_store if masks == "link" else None  # each thread owns its pipeline
    return [
        ServedVerdict(**verdict.model_dump(), masks=served_masks(verdict, masks))
        for verdict in judge_decoded(decoded, pipeline, {})
    ]


def install_error_handlers(api: FastAPI) -> None:
    """Every error as {"error": {"code", "message"}} with a stable code."""

    @api.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        code = getattr(error, "code", None) or CODES_BY_STATUS.get(error.status_code, "bad_request")
        return error_json(error.status_code, code, str(error.detail))

    @api.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors()
        )
        return error_json(422, "bad_request", problems)

    @api.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        logger.exception("request failed")
        return error_json(500, "internal_error", f"{type(error).__name__}: {error}")


class CoeIngress:
    """The HTTP front: decodes uploads, routes and merges with a RoutePipeline whose features,
    experts and localiser are other deployments. The pipeline runs in worker threads, where blocking
    on deployment responses is fine; each thread has its own pipeline, since the feature cache's
    SQLite connection belongs to the thread that opened it."""

    async def __init__(
        self, config: CoeConfig, settings: ServeSettings, features, experts: dict, localizer=None
    ):
        bind_replica_grpc_to_node_address()
        self.config = config
        self.settings = settings
        extractor_id, random_weights = await features.describe.remote()
        self.features = RemoteFeatures(features, extractor_id, random_weights)
        cards = load_expert_cards(config)
        self.pool = RemotePool(
            {
                name: RemoteExpert(handle, cards[name], await handle.identity.remote())
                for name, handle in experts.items()
            }
        )
        self.localizer = None
        if localizer is not None:
            card = load_expert_card(config, config.localize.expert)
            self.localizer = RemoteExpert(localizer, card, await localizer.identity.remote())
        self.mask_store = settings.mask_store or config.home / MASK_STORE
        self.local = threading.local()
        self.workers = ThreadPoolExecutor(settings.pipeline_threads, thread_name_prefix="coe-pipeline")
        # One pipeline now, so that a router that cannot be loaded fails the deployment, not a request.
        first = await asyncio.get_running_loop().run_in_executor(self.workers, self._pipeline)
        self.provenance_reader = first.provenance  # every thread's pipeline holds one like it

    def _pipeline(self) -> RoutePipeline:
        if getattr(self.local, "pipeline", None) is None:
            self.local.pipeline = RoutePipeline(
                self.config,
                say=logger.warning,
                pool=self.pool,
                features=self.features,
                localizer=self.localizer,
            )
        return self.local.pipeline

    async def analyse(self, uploads: list[tuple[str, bytes]], masks: MaskMode) -> list[ServedVerdict]:
        work = asyncio.get_running_loop().run_in_executor(
            self.workers, lambda: analyse_uploads(self._pipeline(), uploads, masks, self.mask_store)
        )
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_s)
        except TimeoutError:
            raise ApiError(
                504, "timeout", f"the analysis took longer than {self.settings.request_timeout_s:g} s"
            ) from None

    def experts_info(self) -> ExpertsResponse:
        def info(expert: RemoteExpert | FileExpert) -> ExpertInfo:
            card = expert.card
            return ExpertInfo(
                name=card.name,
                family=card.family,
                capabilities=list(card.capabilities),
                cost=card.cost,
                resources=card.resources,
                identity=expert.identity,
            )

        return ExpertsResponse(
            experts=[info(expert) for expert in self.pool.experts.values()],
            localizer=info(self.localizer) if self.localizer else None,
            provenance=info(self.provenance_reader) if self.provenance_reader else None,
        )

    async def deployment_states(self) -> dict[str, str]:
        """Serve's view of every deployment of this application (HEALTHY when all replicas are up)."""
        application = serve.get_replica_context().app_name
        status = await asyncio.to_thread(serve.status)
        deployments = status.applications[application].deployments
        return {
            name: str(getattr(state.status, "value", state.status)) for name, state in deployments.items()
        }


def ingress_deployment(settings: ServeSettings):
    """The ingress class with its FastAPI routes. Made per settings, since the routes' limits and
    the gatekeeper's keys are fixed when the FastAPI app is built."""
    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, which fails offline,
    # and nothing installed ships their assets; /openapi.json describes the API to any local tool.
    api = FastAPI(
        title="coe",
        version="1",
        description="Routes each image to the forensic expert most likely to tell whether it is real or AI-generated.",
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(api)
    api.add_middleware(Gatekeeper, settings=settings)

    # No `from __future__ import annotations` in this module: Ray pickles this class by value, and
    # FastAPI could not resolve string annotations against the pickled routes' globals.
    @serve.deployment(name="ingress")
    @serve.ingress(api)
    class Ingress(CoeIngress):
        @api.post(
            "/v1/analyze", response_model=AnalyzeResponse, responses={**ERROR_RESPONSES, 503: {"model": ErrorResponse}}
        )
        async def analyze(
            self,
            files: list[UploadFile] = File(..., description="one or more image files"),
            masks: MaskMode | None = Query(None, description=f"default: {settings.masks}"),
        ) -> AnalyzeResponse:
            """Verdicts for uploaded images, one per file, in order (the same records as `coe route`)."""
            if len(files) > settings.max_images_per_request:
                raise ApiError(
                    413,
                    "too_many_images",
                    f"{len(files)} files, over the limit of {settings.max_images_per_request}",
                )
            uploads = [
                (file.filename or f"upload-{index}", await file.read()) for index, file in enumerate(files)
            ]
            return AnalyzeResponse(verdicts=await self.analyse(uploads, masks or settings.masks))

        @api.get(
            "/v1/masks/{image_key}/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorResponse}, **ERROR_RESPONSES},
        )
        async def mask(self, image_key: str, name: str) -> FileResponse:
            """A mask PNG written for a request with masks=link."""
            path = self.mask_store / MASKS_DIR / image_key / name
            if not (MASK_KEY.match(image_key) and MASK_NAME.match(name) and path.is_file()):
                raise ApiError(404, "not_found", f"no mask {image_key}/{name}")
            return FileResponse(path, media_type="image/png")

        @api.get("/v1/experts", response_model=ExpertsResponse, responses=ERROR_RESPONSES)
        async def experts(self) -> ExpertsResponse:
            """The served experts' cards and the identities of their loaded weights."""
            return self.experts_info()

        @api.get("/healthz", response_model=Health)
        async def healthz(self) -> Health:
            """The ingress process is up."""
            return Health(status="ok")

        @api.get("/readyz", response_model=Health, responses={503: {"model": Health}})
        async def readyz(self):
            """Every deployment of the application is healthy."""
            deployments = await self.deployment_states()
            ready = all(state == "HEALTHY" for state in deployments.values())
            health = Health(status="ready" if ready else "not_ready", deployments=deployments)
            return JSONResponse(health.model_dump(), status_code=200 if ready else 503)

    return Ingress


# ----------------------------------------------------------------------------------------- builder


def check_models(config: CoeConfig) -> None:
    """Serving never trains: the experts and the router must exist before deploying."""
    untrained = ExpertPool(config).untrained()
    router = config.router.path or config.resolve_in_home(DEFAULT_ROUTER)
    if untrained or not has_readable_artifact(router):
        missing = [
            *(f"expert {name}" for name in untrained),
            *([f"router {router}"] if not has_readable_artifact(router) else []),
        ]
        raise ServeError(
            f"nothing to serve yet: missing {', '.join(missing)}; run `coe demo` (or `coe route` once) to build the "
            "default models first"
        )


def fit_to_cluster(
    cards: dict[str, ExpertCard], settings: ServeSettings, say: Callable[[str], None]
) -> tuple[dict[str, ExpertCard], ServeSettings]:
    """The cards as Ray can schedule them on the running cluster. Without GPUs, a replica asking for
    one would never start and deploying would never return, so it gets none and runs on the CPU.
    When the replicas ask for more CPUs than the cluster has, every request is scaled down alike
    (they share the cores) instead of leaving some replicas pending for ever."""
    import ray

    if not ray.is_initialized():  # `serve build` writes a config file without a cluster
        return cards, settings
    cluster = ray.cluster_resources()
    fitted = {}
    for name, card in cards.items():
        if card.resources.num_gpus and not cluster.get("GPU", 0):
            say(
                f"expert {name} asks for {card.resources.num_gpus:g} GPU but the Ray cluster has none: running it on the CPU"
            )
            params = dict(card.params)
            if issubclass(create_expert(card).Params, DeviceParams):
                params["device"] = "cpu"
            card = card.model_copy(
                update={"resources": card.resources.model_copy(update={"num_gpus": 0.0}), "params": params}
            )
        fitted[name] = card
    replicas = settings.experts_autoscaling.min_replicas
    wanted = (
        settings.ingress_num_cpus
        + settings.features_num_cpus
        + replicas * sum(card.resources.num_cpus for card in fitted.values())
    )
    available = cluster.get("CPU", 0)
    if wanted > available > 0:
        scale = available / wanted
        say(
            f"the deployments ask for {wanted:g} CPUs but the Ray cluster has {available:g}: scaling every request by {scale:.2f}"
        )
        fitted = {
            name: card.model_copy(
                update={
                    "resources": card.resources.model_copy(
                        update={"num_cpus": card.resources.num_cpus * scale}
                    )
                }
            )
            for name, card in fitted.items()
        }
        settings = settings.model_copy(
            update={
                "ingress_num_cpus": settings.ingress_num_cpus * scale,
                "features_num_cpus": settings.features_num_cpus * scale,
            }
        )
    return fitted, settings


def bound_settings(settings: ServeSettings) -> ServeSettings:
    """`settings` for the host Serve's proxies actually bind, checked against the key rule. That
    host is whatever started Serve chose (`coe serve`, the http_options of `serve run`'s file, a
    serve.start before), which the application's own args cannot see: the builder asks Serve's
    controller. Without a running Serve (`serve build`) nothing is bound yet."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False) if ray.is_initialized() else None
    host = client.http_config.host if client is not None else None
    bound = settings if host is None else settings.model_copy(update={"host": host})
    bound.check_api_key()
    return bound


def build_application(
    config: CoeConfig, settings: ServeSettings, say: Callable[[str], None] = logger.warning
):
    """The Serve application for `config`: ingress -> features, one deployment per expert."""
    settings = bound_settings(settings)
    check_models(config)
    names = list(
        dict.fromkeys([*config.experts, *([config.localize.expert] if config.localize.expert else [])])
    )
    cards, settings = fit_to_cluster({name: load_expert_card(config, name) for name in names}, settings, say)
    scaling = settings.experts_autoscaling

    def expert_app(card: ExpertCard):
        return ExpertDeployment.options(
            name=f"expert-{card.name}",
            ray_actor_options={
                "num_cpus": card.resources.num_cpus,
                "num_gpus": card.resources.num_gpus,
                "memory": card.resources.memory_mb * 2**20,
            },
            autoscaling_config=scaling.model_dump(),
            max_ongoing_requests=settings.max_ongoing_requests,
        ).bind(config, card, settings.experts_batch)

    experts = {name: expert_app(cards[name]) for name in config.experts}
    localizer = None
    if config.localize.expert:
        localizer = experts.get(config.localize.expert) or expert_app(cards[config.localize.expert])
    features = FeaturesDeployment.options(
        ray_actor_options={"num_cpus": settings.features_num_cpus},
        max_ongoing_requests=settings.max_ongoing_requests,
    ).bind(config, settings.features_batch)
    return (
        ingress_deployment(settings)
        .options(
            ray_actor_options={"num_cpus": settings.ingress_num_cpus},
            max_ongoing_requests=settings.max_ongoing_requests,
        )
        .bind(config, settings, features, experts, localizer)
    )


def build_app(args: ServeArgs):
    """Ray Serve's typed application builder: `serve run coe.serve:build_app` or configs/serve.yaml."""
    return build_application(load_config(args.config, args.set), args.serve)


@contextmanager
def running(
    config: CoeConfig, settings: ServeSettings, address: str | None = None, say: Callable[[str], None] = print
) -> Iterator[str]:
    """Ray (a one-machine cluster on loopback only, unless `address` names one to join) with the
    application deployed; yields its URL, then shuts Serve and Ray down whatever happened."""
    # Before starting Ray: a missing key or model is a user's error, found in a second.
    settings.check_api_key()
    check_models(config)
    with ray_session(address or "local"):
        try:
            serve.start(
                http_options={
                    "host": settings.host,
                    "port": settings.port,
                    "request_timeout_s": settings.request_timeout_s + 10,
                }
            )
            serve.run(build_application(config, settings, say), name="coe", route_prefix="/")
            yield f"http://{settings.host}:{settings.port}"
        finally:
            serve.shutdown()


def serve_command(
    config: CoeConfig, settings: ServeSettings, address: str | None = None, say: Callable[[str], None] = print
) -> None:
    """`coe serve`: deploy, say the URL, and serve until Ctrl-C; then shut Serve and Ray down."""
    with running(config, settings, address, say) as url:
        say(f"coe serves on {url} (OpenAPI: {url}/openapi.json); Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            say("stopping")

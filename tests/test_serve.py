"""`coe serve`: the application deployed once on a real one-machine Ray cluster on loopback only
(started as `coe serve` starts it), asked over real HTTP, and compared with the in-process pipeline
on the same bytes."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from skimage import data as skimage_data

from coe.config import CONFIG_DIR
from coe.core.imaging import decode_image_bytes
from coe.core.records import Artifact, ExpertOutput, Verdict
from coe.pipeline import RoutePipeline
from coe.ray_route import ray_session
from coe.serve import (
    Gatekeeper,
    ServeArgs,
    ServeError,
    ServeSettings,
    bound_settings,
    build_application,
    load_serve_args,
    served_masks,
)
from tests.bad_files import TEST_LIMITS, flat_bilevel_png
from tests.conftest import tiny_config
from tests.ray_sockets import assert_ray_listens_on_loopback_only

API_KEY = "test-key"
AUTH = {"X-API-Key": API_KEY}
MAX_UPLOAD_BYTES = 1_000_000
MAX_BUFFERED_BYTES = 1_500_000  # one upload near the limit fits, two do not
LIMIT_OVERRIDES = (
    f"ingest.max_file_bytes={TEST_LIMITS.max_file_bytes}",
    f"ingest.max_pixels={TEST_LIMITS.max_pixels}",
)


def photo_bytes(picture: str, size: tuple[int, int], format_name: str) -> bytes:
    pixels = getattr(skimage_data, picture)()
    image = Image.fromarray(pixels).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format=format_name, **({"quality": 90} if format_name == "JPEG" else {}))
    return buffer.getvalue()


PHOTOS = {
    "astronaut.jpg": photo_bytes("astronaut", (128, 96), "JPEG"),
    "coffee.png": photo_bytes("coffee", (112, 80), "PNG"),
    "chelsea.jpg": photo_bytes("chelsea", (96, 96), "JPEG"),
    "camera.png": photo_bytes("camera", (80, 120), "PNG"),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained_home, tiny_clip):
    """The application on a 2-CPU Ray cluster started as `coe serve` starts it, requiring an API
    key; Serve and Ray are shut down whatever happens."""
    from ray import serve

    saved = os.environ.get("RAY_ENABLE_AUTO_CONNECT")
    config = tiny_config(trained_home, tiny_clip, *LIMIT_OVERRIDES)
    settings = ServeSettings(
        port=free_port(),
        api_keys=[API_KEY],
        require_api_key=True,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_buffered_bytes=MAX_BUFFERED_BYTES,
        max_images_per_request=16,
        request_timeout_s=60,
    )
    try:
        with ray_session("local", num_cpus=2):
            try:
                serve.start(http_options={"host": settings.host, "port": settings.port})
                serve.run(build_application(config, settings), name="coe", route_prefix="/")
                yield f"http://127.0.0.1:{settings.port}"
            finally:
                serve.shutdown()
    finally:
        if saved is None:
            os.environ.pop("RAY_ENABLE_AUTO_CONNECT", None)
        else:
            os.environ["RAY_ENABLE_AUTO_CONNECT"] = saved


@pytest.fixture(scope="module")
def in_process(trained_home, tiny_clip, tmp_path_factory):
    """The in-process pipeline over a copy of the home without its feature cache, so that neither
    side reads the features the other computed."""
    home = tmp_path_factory.mktemp("in-process-home") / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("features.sqlite*"))
    config = tiny_config(home, tiny_clip, *LIMIT_OVERRIDES)
    pipeline = RoutePipeline(config, say=lambda message: None)
    yield config, pipeline
    pipeline.close()


def analyze(url: str, files: list[tuple[str, bytes]], headers=AUTH, **params) -> requests.Response:
    return requests.post(
        f"{url}/v1/analyze",
        files=[("files", (name, data)) for name, data in files],
        headers=headers,
        params=params,
        timeout=120,
    )


def assert_same_verdicts(served_verdicts: list[dict], reference: list[Verdict]) -> None:
    for got, expected in zip(served_verdicts, reference, strict=True):
        assert got["path"] == expected.path
        assert got["error"] is None
        assert (got["label"], got["decided_by"]) == (expected.label, expected.decided_by)
        assert got["p_fake"] == pytest.approx(expected.p_fake, abs=1e-5)
        assert got["routing"]["chosen"] == expected.routing.chosen


def test_analyze_one_and_many_match_the_in_process_pipeline(served, in_process):
    config, pipeline = in_process
    files = list(PHOTOS.items())
    reference = pipeline.analyse(
        [(name, decode_image_bytes(data, name, config.ingest)) for name, data in files]
    )

    one = analyze(served, files[:1])
    assert one.status_code == 200, one.text
    assert_same_verdicts(one.json()["verdicts"], reference[:1])

    many = analyze(served, files)
    assert many.status_code == 200, many.text
    verdicts = many.json()["verdicts"]
    assert_same_verdicts(verdicts, reference)
    assert all(verdict["image"]["path"] == name for verdict, (name, _) in zip(verdicts, files, strict=True))


def test_bad_files_get_their_codes_and_duplicates_are_analysed_once(served):
    files = [
        ("good.jpg", PHOTOS["astronaut.jpg"]),
        ("corrupt.png", PHOTOS["coffee.png"][:40] + bytes(200)),
        ("bomb.png", flat_bilevel_png(5_000, 5_000)),
        ("copy.jpg", PHOTOS["astronaut.jpg"]),
        ("notes.txt", b"not an image at all"),
    ]
    response = analyze(served, files, masks="none")
    assert response.status_code == 200, response.text
    verdicts = response.json()["verdicts"]
    assert [verdict["path"] for verdict in verdicts] == [name for name, _ in files]
    codes = [verdict["error"]["code"] if verdict["error"] else None for verdict in verdicts]
    assert codes[0] is None and codes[3] is None
    assert codes[1] in {"corrupt", "truncated"}
    assert codes[2] == "decompression_bomb"
    assert codes[4] == "not_an_image"
    assert verdicts[3]["duplicate_of"] == "good.jpg"
    assert verdicts[3]["p_fake"] == verdicts[0]["p_fake"]


def test_api_key_is_required_and_accepted(served):
    files = [("a.jpg", PHOTOS["chelsea.jpg"])]
    refused = analyze(served, files, headers={})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert analyze(served, files, headers={"X-API-Key": "wrong"}).status_code == 401
    assert analyze(served, files, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert requests.get(f"{served}/v1/experts", timeout=10).status_code == 401


def test_oversized_uploads_and_too_many_images_are_refused(served):
    too_big = analyze(served, [("big.bin", bytes(MAX_UPLOAD_BYTES + 1))])
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"

    def chunked_multipart():  # no Content-Length: the limit must hold while the body streams in
        yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n\r\n'
        for _ in range(MAX_UPLOAD_BYTES // 65536 + 2):
            yield bytes(65536)
        yield b"\r\n--xyz--\r\n"

    streamed = requests.post(
        f"{served}/v1/analyze",
        data=chunked_multipart(),
        timeout=60,
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "payload_too_large"

    many = analyze(served, [(f"{index}.jpg", PHOTOS["chelsea.jpg"]) for index in range(17)])
    assert many.status_code == 413
    assert many.json()["error"]["code"] == "too_many_images"


def test_experts_health_and_readiness(served):
    listed = requests.get(f"{served}/v1/experts", headers=AUTH, timeout=10).json()
    experts = listed["experts"]
    assert [expert["name"] for expert in experts] == ["spectrum", "dct", "residual"]
    assert all(expert["identity"] and expert["resources"]["num_gpus"] == 0 for expert in experts)
    # The provenance reader runs in the ingress on the uploaded bytes, and is listed as such.
    assert listed["provenance"]["family"] == "provenance" and listed["provenance"]["identity"].startswith("1:")
    assert requests.get(f"{served}/healthz", timeout=10).json() == {"status": "ok", "deployments": {}}
    ready = requests.get(f"{served}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["deployments"]) >= {"ingress", "features", "expert-spectrum"}


def test_openapi_schema_holds_under_generated_requests(served):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    schema = schemathesis.openapi.from_url(f"{served}/openapi.json")
    failures = []
    for operation in schema.get_all_operations():
        operation = operation.ok()

        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=served, headers=AUTH, timeout=60)
            try:
                case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
            except AssertionError as error:  # schemathesis' failures are AssertionErrors; collect them all
                failures.append(f"{operation.label}: {error}")

        check()
    assert not failures, "\n".join(failures[:5])


def test_concurrent_requests_are_all_answered(served):
    files = list(PHOTOS.items())

    def one(index: int) -> int:
        response = analyze(served, [files[index % len(files)]], masks="none")
        return response.status_code if response.json()["verdicts"][0]["label"] else -1

    with ThreadPoolExecutor(8) as clients:
        statuses = list(clients.map(one, range(32)))
    assert statuses == [200] * 32


def test_masks_become_png_data_urls():
    mask = np.zeros((8, 10), dtype=bool)
    mask[2:4, 3:7] = True
    output = ExpertOutput(
        expert="legion",
        p_fake=0.9,
        label="fake",
        artifacts=[Artifact(phrase="six fingers", category="structure").with_mask(mask)],
    )
    masks = served_masks(Verdict(path="a.png", expert_outputs=[output]), "inline")
    assert set(masks) == {"legion.00.structure", "legion.union"}
    encoded = masks["legion.union"].removeprefix("data:image/png;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))
    assert decoded.shape == (8, 10) and (decoded > 0).sum() == mask.sum()


def test_settings_require_a_key_off_loopback_and_read_the_serve_config(monkeypatch):
    monkeypatch.delenv("COE_API_KEYS", raising=False)
    with pytest.raises(ServeError) as refused:
        ServeSettings(host="0.0.0.0").check_api_key()
    assert str(refused.value) == (
        "refusing to serve on '0.0.0.0' without an API key (require_api_key: auto): set serve.api_keys or "
        "COE_API_KEYS, or bind a loopback address"
    )
    for loopback in ("127.0.0.1", "localhost", "::1", "::ffff:127.0.0.1"):
        assert not ServeSettings(host=loopback).api_key_required, loopback
    ServeSettings().check_api_key()
    monkeypatch.setenv("COE_API_KEYS", "key-alpha, key-beta")
    settings = ServeSettings(host="0.0.0.0")
    assert settings.api_key_required
    settings.check_api_key()
    assert [key.get_secret_value() for key in settings.api_keys] == ["key-alpha", "key-beta"]
    assert "key-alpha" not in repr(settings)
    with pytest.raises(ValueError, match="max_buffered_bytes must be at least max_upload_bytes"):
        ServeSettings(max_upload_bytes=2_000, max_buffered_bytes=1_000)
    args = load_serve_args(CONFIG_DIR / "serve.yaml")
    assert isinstance(args, ServeArgs) and args.serve.max_ongoing_requests >= 100
    assert (args.serve.host, args.serve.port) == ("127.0.0.1", 8000)
    given = load_serve_args(CONFIG_DIR / "serve.yaml", host="::1", port=9001)
    assert (given.serve.host, given.serve.port) == ("::1", 9001)


def test_the_builder_takes_the_host_serve_binds_not_its_args(served, monkeypatch):
    """Whoever started Serve chose the address; the args' host is only what the file said. The
    refusal off loopback is tested with Serve binding 0.0.0.0 in test_serve_run.py."""
    monkeypatch.delenv("COE_API_KEYS", raising=False)
    assert bound_settings(ServeSettings(host="0.0.0.0")).host == "127.0.0.1"


def test_a_request_that_reached_a_non_loopback_address_needs_a_key(monkeypatch):
    """Defense in depth, per request, from the ASGI scope's server address: settings that believe
    the endpoint is on loopback do not open it where a request arrived elsewhere."""
    import asyncio

    from starlette.responses import PlainTextResponse

    monkeypatch.delenv("COE_API_KEYS", raising=False)
    gate = Gatekeeper(PlainTextResponse("answered"), ServeSettings(host="127.0.0.1"))

    def status(server: tuple[str, int] | None, path: str = "/v1/experts") -> int:
        scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b"", "server": server}
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        # In a thread of its own: a test before this one (Playwright's) may leave a loop running here.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, gate(scope, receive, send)).result()
        return sent[0]["status"]

    assert status(("127.0.0.1", 8000)) == status(("::ffff:127.0.0.1", 8000)) == 200
    assert status(("192.0.2.10", 8000)) == status(None) == 401
    assert status(("192.0.2.10", 8000), "/healthz") == 200


def test_every_port_of_the_cluster_listens_on_loopback_only(served):
    """Whoever reaches Ray's ports can run code on the cluster: the cluster coe starts (GCS, raylet,
    agents, the workers with Serve's proxy and replicas, and this driver) listens on loopback alone."""
    assert_ray_listens_on_loopback_only()


def test_interactive_docs_are_off_and_the_openapi_description_is_open(served):
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        with_key = requests.get(f"{served}{path}", headers=AUTH, timeout=10)
        assert with_key.status_code == 404 and with_key.json()["error"]["code"] == "not_found", path
        assert requests.get(f"{served}{path}", timeout=10).status_code == 401, path
    description = requests.get(f"{served}/openapi.json", timeout=10)
    assert description.status_code == 200 and "/v1/analyze" in description.json()["paths"]


def multipart(name: str, size: int) -> tuple[bytes, str]:
    boundary = "coe-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + bytes(size) + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_uploads_in_flight_are_bounded_together(served):
    """One upload is held half sent; while its bytes are reserved, an upload that fits alone but not
    beside it is answered 503 busy, declared or streamed, and passes once the first is answered."""
    held_body, content_type = multipart("held.bin", 900_000)
    probe_body, _ = multipart("probe.bin", 700_000)  # 900_000 + 700_000 > MAX_BUFFERED_BYTES

    def probe() -> requests.Response:
        return requests.post(
            f"{served}/v1/analyze?masks=none", data=probe_body, timeout=60, headers={**AUTH, "Content-Type": content_type}
        )

    assert probe().status_code == 200  # alone, it fits
    held = http.client.HTTPConnection("127.0.0.1", int(served.rsplit(":", 1)[1]), timeout=60)
    try:
        held.putrequest("POST", "/v1/analyze?masks=none")
        for header, value in {**AUTH, "Content-Type": content_type, "Content-Length": str(len(held_body))}.items():
            held.putheader(header, value)
        held.endheaders()
        held.send(held_body[:4096])
        time.sleep(1)  # for the held request to reach the ingress before the first probe
        deadline = time.monotonic() + 30
        while (busy := probe()).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "busy"

        def streamed():  # no Content-Length: counted against the budget as it streams in
            for start in range(0, len(probe_body), 65536):
                yield probe_body[start : start + 65536]

        chunked = requests.post(
            f"{served}/v1/analyze?masks=none", data=streamed(), timeout=60, headers={**AUTH, "Content-Type": content_type}
        )
        assert chunked.status_code == 503 and chunked.json()["error"]["code"] == "busy", chunked.text
        held.send(held_body[4096:])
        answer = held.getresponse()
        assert answer.status == 200
        assert [verdict["path"] for verdict in json.loads(answer.read())["verdicts"]] == ["held.bin"]
    finally:
        held.close()
    deadline = time.monotonic() + 10  # the held request's bytes are released once it is answered
    while (after := probe()).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after.status_code == 200, after.text


def test_load_benchmark_runs_end_to_end(tmp_path, trained_home, tiny_clip):
    """Tiny sizes; the figures are not judged. A subprocess, so that it starts its own Ray."""
    out = tmp_path / "load"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.scripts.load",
            "--images",
            "4",
            "--size",
            "96",
            "--requests",
            "8",
            "--clients",
            "1",
            "4",
            "--home",
            str(trained_home),
            "--out",
            str(out),
            "--set",
            f"features.weights=local-dir:{tiny_clip}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_ENABLE_AUTO_CONNECT": "0"},
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads((out / "load.json").read_text())
    assert [run["clients"] for run in report["runs"]] == [1, 4]
    assert all(
        run["served"]["requests_per_second"] > 0 and run["throughput_ratio"] > 0 for run in report["runs"]
    )


def test_masks_as_links_name_the_files_the_pipeline_wrote(tmp_path):
    from coe.core.masks import save_masks

    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    output = ExpertOutput(expert="legion", p_fake=0.9, label="fake",
                          artifacts=[Artifact(phrase="odd shadow", category="physics").with_mask(mask)])
    save_masks(output, tmp_path, "0123456789abcdef")
    links = served_masks(Verdict(path="a.png", expert_outputs=[output]), "link")
    assert links == {
        "legion.00.physics": "/v1/masks/0123456789abcdef/legion.00.physics.odd-shadow.png",
        "legion.union": "/v1/masks/0123456789abcdef/legion.union.png",
    }
    assert served_masks(Verdict(path="a.png", expert_outputs=[output]), "none") == {}


def test_mask_files_are_served_and_nothing_else(served, trained_home):
    folder = trained_home / "serve-masks" / "masks" / "00112233aabbccdd"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(folder / "legion.union.png")
    answer = requests.get(f"{served}/v1/masks/00112233aabbccdd/legion.union.png", headers=AUTH, timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer.content))) > 0, np.eye(8, dtype=bool))
    assert requests.get(f"{served}/v1/masks/00112233aabbccdd/legion.union.png", timeout=30).status_code == 401
    for bad in ("00112233aabbccdd/missing.png", "..%2F..%2Fexperts/meta.json", "00112233aabbccdd/..%2Fx.png",
                "not-a-key/legion.union.png"):
        refused = requests.get(f"{served}/v1/masks/{bad}", headers=AUTH, timeout=30)
        assert refused.status_code == 404, bad
        assert refused.json()["error"]["code"] == "not_found"
    image = io.BytesIO()
    Image.fromarray(np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((8, 8), dtype=np.uint8))).save(image, "PNG")
    analysed = requests.post(f"{served}/v1/analyze?masks=link", headers=AUTH, timeout=60,
                             files={"files": ("eye.png", image.getvalue(), "image/png")})
    assert analysed.status_code == 200 and analysed.json()["verdicts"][0]["error"] is None


def test_gpu_experts_run_on_the_cpu_of_a_cluster_without_gpus(served):
    """The cluster of this module has 2 CPUs and no GPU: a card asking for a GPU would never be
    scheduled, so it is fitted to the CPU, and the CPU requests are scaled to what exists."""
    from coe.config import load_config, load_expert_card
    from coe.serve import fit_to_cluster

    config = load_config()
    cards = {name: load_expert_card(config, name) for name in ("fakevlm", "univfd", "dct")}
    said: list[str] = []
    fitted, settings = fit_to_cluster(cards, ServeSettings(), said.append)
    assert all(card.resources.num_gpus == 0 for card in fitted.values())
    assert fitted["fakevlm"].params["device"] == fitted["univfd"].params["device"] == "cpu"
    assert "device" not in fitted["dct"].params
    assert any("fakevlm asks for 0.25 GPU but the Ray cluster has none" in line for line in said)
    wanted = settings.ingress_num_cpus + settings.features_num_cpus + sum(c.resources.num_cpus for c in fitted.values())
    assert wanted == pytest.approx(2.0)

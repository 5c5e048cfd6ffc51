"""`serve run configs/serve.yaml`, Ray Serve's own launcher, on a cluster started as coe starts one:
the application learns from Serve the address its proxy binds, and off loopback without an API key
it refuses to start, in one line."""

from __future__ import annotations

import socket
import sys
import time

import pytest
import requests
import yaml

from coe.config import CONFIG_DIR
from coe.ray_route import ray_session


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    with ray_session("local", num_cpus=2):
        yield


def test_serve_run_off_loopback_without_a_key_refuses_to_start(cluster, trained_config, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from ray import serve
    from ray.serve.scripts import cli

    monkeypatch.delenv("COE_API_KEYS", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # `serve run` puts its --app-dir first
    port = free_port()
    document = yaml.safe_load((CONFIG_DIR / "serve.yaml").read_text())
    document["http_options"].update(host="0.0.0.0", port=port)  # every interface; asked only on 127.0.0.1
    document["applications"][0]["args"]["set"] = [
        f"home={trained_config.home}", f"features.weights={trained_config.features.weights}",
    ]
    serve_file = tmp_path / "serve.yaml"
    serve_file.write_text(yaml.safe_dump(document))
    try:
        result = CliRunner().invoke(cli, ["run", "--non-blocking", str(serve_file)])
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 180
        while (app := serve.status().applications.get("coe")) is None or app.status in {"NOT_STARTED", "DEPLOYING"}:
            assert time.monotonic() < deadline, app
            time.sleep(1)
        assert app.status == "DEPLOY_FAILED"
        assert app.message == (
            "Deploying app 'coe' failed with exception:\n"
            "refusing to serve on '0.0.0.0' without an API key (require_api_key: auto): set serve.api_keys or "
            "COE_API_KEYS, or bind a loopback address"
        )
        answer = requests.post(f"http://127.0.0.1:{port}/v1/analyze", files={"files": ("a.bin", b"x")}, timeout=30)
        assert answer.status_code == 404
    finally:
        serve.shutdown()

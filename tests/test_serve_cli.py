"""`coe serve` from the command line: it deploys, answers on the port its Serve file names, and stops
cleanly on Ctrl-C; with nothing trained it says what to do instead of starting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from PIL import Image

from coe.config import CONFIG_DIR

COE = [sys.executable, "-m", "coe"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_nothing_trained_is_a_clear_error_before_ray_starts(tmp_path):
    result = subprocess.run(
        [*COE, "serve", "--set", f"home={tmp_path / 'empty'}"], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    said = " ".join(result.stderr.split())
    assert "nothing to serve yet" in said and "run `coe demo`" in said


def test_coe_serve_answers_and_stops_on_ctrl_c(tmp_path, trained_config):
    serve_file = tmp_path / "serve.yaml"
    document = yaml.safe_load((CONFIG_DIR / "serve.yaml").read_text())
    document["http_options"]["port"] = port = free_port()
    serve_file.write_text(yaml.safe_dump(document))
    Image.new("RGB", (96, 80), (200, 40, 40)).save(tmp_path / "red.png")
    server = subprocess.Popen(
        [*COE, "serve", str(serve_file), "--set", f"home={trained_config.home}",
         "--set", f"features.weights={trained_config.features.weights}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COE_API_KEYS": ""},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or still deploying
                pass
            assert server.poll() is None, server.stdout.read()
            time.sleep(1)
        with (tmp_path / "red.png").open("rb") as image:
            answer = requests.post(f"{url}/v1/analyze", files={"files": ("red.png", image, "image/png")}, timeout=60)
        assert answer.status_code == 200, answer.text
        (verdict,) = answer.json()["verdicts"]
        assert verdict["path"] == "red.png" and verdict["label"] in {"real", "fake", "uncertain"}
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 0, output
    assert f"coe serves on {url}" in output

"""`coe serve` from the command line: it deploys, answers on the address --host and --port give
(over the Serve file's), stops cleanly on Ctrl-C and leaves no Ray session files; with nothing
trained, or off loopback without a key, it says what to do instead of starting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
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


def test_off_loopback_without_a_key_is_refused_in_one_line_before_ray_starts(tmp_path):
    # Nothing trained either: the key is checked first, so the refusal is the key's.
    result = subprocess.run(
        [*COE, "serve", "--host", "0.0.0.0", "--set", f"home={tmp_path / 'empty'}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COE_API_KEYS": ""},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert said == (
        "error: refusing to serve on '0.0.0.0' without an API key (require_api_key: auto): set serve.api_keys or "
        "COE_API_KEYS, or bind a loopback address"
    )


def test_coe_serve_answers_and_stops_on_ctrl_c(tmp_path, trained_config):
    port = free_port()  # configs/serve.yaml says 8000: --port wins
    Image.new("RGB", (96, 80), (200, 40, 40)).save(tmp_path / "red.png")
    # A TMPDIR of its own, short: Ray's socket paths under it must stay under 108 bytes.
    with tempfile.TemporaryDirectory(prefix="coe-t-") as temp_root:
        server = subprocess.Popen(
            [*COE, "serve", str(CONFIG_DIR / "serve.yaml"), "--host", "127.0.0.1", "--port", str(port),
             "--set", f"home={trained_config.home}", "--set", f"features.weights={trained_config.features.weights}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "COE_API_KEYS": "", "TMPDIR": temp_root},
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
            assert list(Path(temp_root).glob("coe-ray-*/session_*"))  # the session files are where coe put them
        finally:
            server.send_signal(signal.SIGINT)
            output, _ = server.communicate(timeout=120)
        assert server.returncode == 0, output
        assert f"coe serves on {url}" in output
        assert os.listdir(temp_root) == []  # and went with the cluster

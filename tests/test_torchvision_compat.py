"""The torchvision shim: open_clip imports and image transforms work next to the CPU torch."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from coe.core import torchvision_compat
broken = not torchvision_compat._extension_loads()
torchvision_compat.ensure_torchvision_importable()
torchvision_compat.ensure_torchvision_importable()  # experts and features each call it: must be idempotent
import open_clip, torchvision
from torchvision.transforms import functional
from PIL import Image
tensor = functional.to_tensor(functional.resize(Image.new("RGB", (40, 30), (255, 0, 0)), [15, 20]))
assert tuple(tensor.shape) == (3, 15, 20) and float(tensor[0].mean()) == 1.0
print("extension_missing" if broken else "extension_loads", len(torchvision_compat._KEEP_ALIVE))
"""


def test_open_clip_and_torchvision_transforms_import_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    state, defined = result.stdout.split()
    # The schemas are defined exactly when the compiled extension is missing, and never otherwise.
    assert (state, defined) in {("extension_missing", "1"), ("extension_loads", "0")}

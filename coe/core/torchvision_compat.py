"""Make `import torchvision` work next to a CPU-only torch whose matching torchvision is a CUDA build.

The only torchvision that resolves with torch 2.13.0 CPU is a CUDA build; its compiled extension
fails to load, and its meta registrations then reference `torchvision::nms` / `torchvision::qnms`
schemas that were never defined, so the import raises. open_clip and transformers' image classes
import torchvision, so every CLIP feature depends on this. Defining the two schemas before the
first import makes torchvision importable (transforms work; its compiled ops still raise).
This runs only when the extension is actually missing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_KEEP_ALIVE: list = []
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _extension_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to repair
    folder = Path(next(iter(spec.submodule_search_locations)))
    libraries = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except (OSError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> None:
    if _KEEP_ALIVE or "torchvision" in sys.modules or _extension_loads():
        return  # already repaired, already imported, or nothing to repair
    import torch

    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS.values():
        library.define(schema)
    _KEEP_ALIVE.append(library)  # the schemas vanish when the Library object is collected

"""The hub-cache file of an open_clip pretrained tag, found without touching the network: router
features and the UnivFD expert both load open_clip weights this way."""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath


def cached_open_clip_checkpoint(pretrained_cfg: dict) -> Path | None:
    """open_clip names hub files "org/repo/file", or "org/repo/" for its default file, and prefers a
    safetensors twin of either."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    entry = pretrained_cfg.get("hf_hub", "")
    if not entry:
        return None
    repo_id, filename = posixpath.split(entry)
    filename = filename or HF_WEIGHTS_NAME
    twin = HF_SAFE_WEIGHTS_NAME if filename == HF_WEIGHTS_NAME else str(PurePosixPath(filename).with_suffix(".safetensors"))
    for candidate in (twin, filename):
        found = try_to_load_from_cache(repo_id, candidate)
        if isinstance(found, str):
            return Path(found)
    return None

"""Where a pretrained expert's weights come from, and which device and precision run it.

A weights reference is a local path (folder or file) or `hf-hub:ORG/REPO[@REVISION]`. A hub
reference is looked up in the Hugging Face hub cache first and downloaded only where a network
exists and `HF_HUB_OFFLINE` is not set. Whatever is missing is reported with how to obtain it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from coe.core.errors import UserError

HF_HUB = "hf-hub:"
_EDGE_BYTES = 1 << 20


class WeightsNotFoundError(UserError, FileNotFoundError):
    pass


class WeightsFormatError(UserError, ValueError):
    """The weights a card points at are not what its expert reads."""


def hub_repo(reference: str) -> tuple[str, str | None] | None:
    """(repo id, revision) of an `hf-hub:` reference, else None."""
    if not reference.startswith(HF_HUB):
        return None
    repo_id, _, revision = reference[len(HF_HUB):].partition("@")
    return repo_id, revision or None


def locate_weights(
    reference: str | Path,
    expert: str,
    required: tuple[str, ...] = (),
    download: bool = True,
    patterns: tuple[str, ...] | None = None,
) -> Path:
    """The local folder or file holding `reference`; `required` names files a folder must contain.
    `download=False` only looks (the hub cache, the disk); `patterns` (globs) limits a download to
    the files needed, e.g. a processor's configs and tokenizer out of a 14 GB model repository."""
    repo = hub_repo(str(reference))
    if repo is None:
        path = Path(reference).expanduser()
        if not path.exists():
            raise WeightsNotFoundError(f"expert {expert!r}: no weights at {path}")
    else:
        path = _from_hub(*repo, expert=expert, download=download, patterns=patterns)
    missing = [name for name in required if path.is_dir() and not (path / name).exists()]
    if missing:
        raise WeightsNotFoundError(f"expert {expert!r}: {path} lacks {', '.join(missing)}")
    return path


def _from_hub(
    repo_id: str, revision: str | None, expert: str, download: bool, patterns: tuple[str, ...] | None
) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    how = (
        f"download it where a network exists (`hf download {repo_id} --local-dir DIR`) and set the card's "
        f"`weights:` to DIR, or fill the hub cache ({constants.HF_HUB_CACHE})"
    )
    if constants.HF_HUB_OFFLINE or not download:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "coe was asked not to download"
        raise WeightsNotFoundError(f"expert {expert!r}: {repo_id} is not in the hub cache and {why}; {how}")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as error:
        raise WeightsNotFoundError(
            f"expert {expert!r}: {repo_id} is not in the hub cache and could not be downloaded "
            f"({type(error).__name__}); {how}"
        ) from error


def weights_digest(path: Path) -> str:
    """sha256 over every weights file's relative name, size, first and last MiB: cheap on a 15 GB
    checkpoint, and it changes when a file is replaced by a different one."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_EDGE_BYTES))
            if size > 2 * _EDGE_BYTES:
                handle.seek(-_EDGE_BYTES, 2)
                digest.update(handle.read())
    return digest.hexdigest()


def resolve_device(requested: str):
    """`auto`: the first CUDA device where one exists, else the CPU."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} asked for, but torch sees no CUDA device")
    return device


def resolve_dtype(requested: str, device):
    """`auto`: bfloat16 on a CUDA device that supports it (float16 on older ones), float32 on the CPU,
    where half precision is slow and bfloat16 matmuls lose accuracy for no gain."""
    import torch

    if requested != "auto":
        return getattr(torch, requested)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

"""Run folders that resume: a run records what made it, and refuses to continue with anything else."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from coe.core.errors import UserError


class RunMismatchError(UserError, ValueError):
    pass


def check_run_identity(out_dir: Path, run_file: str, identity: dict, restart: bool, discard: Sequence[str]) -> None:
    """Refuse to resume a run made with another configuration into the same folder; `restart`
    deletes the `discard` files and folders of the earlier attempt first."""
    record = out_dir / run_file
    if restart:
        for name in discard:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    elif record.exists():
        previous = json.loads(record.read_text())
        if previous != identity:
            changed = sorted(k for k in set(previous) | set(identity) if previous.get(k) != identity.get(k))
            raise RunMismatchError(
                f"{out_dir} holds a run made with a different {', '.join(changed)}; "
                "use another --out, or --restart to discard it"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity, indent=2, sort_keys=True))

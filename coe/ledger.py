"""The run ledger: every finished path is appended (and fsynced) as one JSON line, so a run that
is interrupted at any point — Ctrl-C, kill -9, power loss — resumes where it stopped, and ends
with exactly one result per path."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from pydantic import ValidationError

from coe.core.masks import MASKS_DIR
from coe.core.records import Verdict
from coe.core.runs import check_run_identity as check_identity

LEDGER_FILE = "ledger.jsonl"
RUN_FILE = "run.json"
# What was asked for (configuration and command), beside what it was done with (RUN_FILE): a
# finished run asked again the same is answered from the ledger without loading a model.
REQUEST_FILE = "request.json"


class Ledger:
    def __init__(self, out_dir: Path):
        self.path = out_dir / LEDGER_FILE
        self.verdicts: dict[str, Verdict] = {}
        self.by_image: dict[str, Verdict] = {}
        out_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._handle = self.path.open("a", encoding="utf-8")

    def _recover(self) -> None:
        """Read what earlier attempts finished; cut a line that a kill left half-written."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        if good_end < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
        for line in data[:good_end].splitlines():
            try:
                verdict = Verdict.model_validate_json(line)
            except ValidationError:
                continue  # a line from an incompatible version: that path is simply done again
            self._remember(verdict)

    def _remember(self, verdict: Verdict) -> None:
        self.verdicts.setdefault(verdict.path, verdict)
        if verdict.image_id and verdict.error is None and verdict.duplicate_of is None:
            self.by_image.setdefault(verdict.image_id, verdict)

    def __contains__(self, path: str) -> bool:
        return path in self.verdicts

    def append(self, verdicts: Iterable[Verdict]) -> None:
        lines = []
        for verdict in verdicts:
            if verdict.path in self.verdicts:
                continue
            self._remember(verdict)
            lines.append(verdict.model_dump_json() + "\n")
        if lines:
            self._handle.write("".join(lines))
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def check_run_identity(out_dir: Path, identity: dict, restart: bool) -> None:
    check_identity(out_dir, RUN_FILE, identity, restart, discard=[LEDGER_FILE, MASKS_DIR, REQUEST_FILE])


def record_request(out_dir: Path, request: dict) -> None:
    (out_dir / REQUEST_FILE).write_text(json.dumps(request, indent=2, sort_keys=True))


def finished_earlier(out_dir: Path, request: dict, paths: Sequence[str]) -> list[Verdict] | None:
    """The verdicts for these paths, when an earlier attempt in out_dir, asked the same, judged every
    one of them; else None."""
    try:
        if json.loads((out_dir / REQUEST_FILE).read_text()) != request:
            return None
    except (OSError, ValueError):
        return None
    if not (out_dir / LEDGER_FILE).is_file():
        return None
    ledger = Ledger(out_dir)
    try:
        return [ledger.verdicts[path] for path in paths] if all(path in ledger for path in paths) else None
    finally:
        ledger.close()

"""coe's shipped configuration, installed as package data beside the code: `defaults.yaml`, the
expert cards in `experts/`, the Serve file `serve.yaml` and the benchmark definitions in
`benchmarks/`. Users override them with `--config`, `--set` and cards of their own (`experts_dir`)
instead of editing these files."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent

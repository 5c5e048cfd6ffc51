"""The low layer every package may import: records, safe image decoding, the manifest parser,
YAML files into pydantic models, compatibility shims.

`experts`, `router` and the `benchmarks` library (not its measurement scripts) import from `coe.core`
only, never from the rest of `coe` (orchestration); tests/test_layering.py enforces that."""

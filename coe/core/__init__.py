"""The low layer every package may import: records, safe image decoding, compatibility shims.

`experts`, `router` and `benchmarks` import from `coe.core` only, never from the rest of `coe`
(orchestration); tests/test_layering.py enforces that."""

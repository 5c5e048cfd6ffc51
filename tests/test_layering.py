"""The architecture as a test: experts, router and benchmarks never import orchestration, only
the low layer coe.core; experts and router never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "experts": ("coe", "router", "benchmarks"),
    "router": ("coe", "experts", "benchmarks"),
    "benchmarks": ("coe",),
    "coe/core": ("coe", "experts", "router", "benchmarks"),
}
ALLOWED = ("coe.core",)
# Scripts that measure the whole product (nothing imports them) may use orchestration.
PRODUCT_BENCHMARKS = {
    "benchmarks/throughput.py", "benchmarks/load.py", "benchmarks/report_scale.py", "benchmarks/provenance_effect.py",
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layers(package):
    sources = sorted(p for p in (ROOT / package).rglob("*.py") if str(p.relative_to(ROOT)) not in PRODUCT_BENCHMARKS)
    assert sources
    violations = []
    for source in sources:
        for module in imported_modules(source):
            top = module.split(".")[0]
            if top in FORBIDDEN[package] and not module.startswith(ALLOWED):
                violations.append(f"{source.relative_to(ROOT)} imports {module}")
    assert not violations

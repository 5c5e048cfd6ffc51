"""The architecture as a test: experts, router and the benchmarks library never import
orchestration, only the low layer coe.core; experts and router never import each other; nothing
else in the product imports the measurement scripts (benchmarks/scripts/) or the tests' support."""

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
# The measurement scripts measure the whole product, so they may use orchestration (and tests.support).
MEASUREMENT_SCRIPTS = "benchmarks/scripts"
PRODUCT = ("coe", "experts", "router", "benchmarks")


def library_sources(package: str) -> list[Path]:
    return sorted(
        path
        for path in (ROOT / package).rglob("*.py")
        if not path.relative_to(ROOT).is_relative_to(MEASUREMENT_SCRIPTS)
    )


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
    sources = library_sources(package)
    assert sources
    violations = []
    for source in sources:
        for module in imported_modules(source):
            top = module.split(".")[0]
            if top in FORBIDDEN[package] and not module.startswith(ALLOWED):
                violations.append(f"{source.relative_to(ROOT)} imports {module}")
    assert not violations


def test_the_product_never_imports_the_measurement_scripts_or_test_support():
    sources = [source for package in PRODUCT for source in library_sources(package)]
    violations = [
        f"{source.relative_to(ROOT)} imports {module}"
        for source in sources
        for module in imported_modules(source)
        if module.startswith(("benchmarks.scripts", "tests.")) or module == "tests"
    ]
    assert not violations

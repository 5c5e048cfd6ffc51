"""coe as users install it: a real wheel, built from the sources and installed into a fresh virtual
environment, run from another folder. The configuration it ships (defaults, expert cards, the Serve
file, benchmark definitions, report templates) must come with it.

The fresh environment borrows its dependencies from the test environment through a .pth file:
installing torch and the rest again would take minutes and gigabytes, and what is under test is
coe's own package, which comes from the wheel alone (the tree is nowhere on its path)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout
    return [name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bin/` folder of a fresh venv with coe installed from its wheel."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to know which files are the project's")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for name in project_files():  # a copy, so that building writes nothing into the tree
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"),
         str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = (work / "dist").glob("coe-*.whl")
    environment = work / "venv"
    venv.create(environment, with_pip=False)
    [site_packages] = (environment / "lib").glob("python*/site-packages")
    (site_packages / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [environment / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--ignore-installed", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )
    return environment / "bin"


def run(installed: Path, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([installed / "coe", *arguments], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_wheel_ships_its_configuration_and_runs_from_anywhere(installed, tmp_path, trained_config):
    where = subprocess.run(
        [installed / "python", "-c", "import coe, configs; print(coe.__file__); print(configs.CONFIG_DIR)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.split()
    assert all(str(installed.parent) in line for line in where), where  # the wheel's copy, not the tree
    config_dir = Path(where[1])
    shipped = {str(p.relative_to(config_dir)) for p in config_dir.rglob("*.yaml")}
    in_tree = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped == in_tree and "serve.yaml" in shipped and "experts/legion.yaml" in shipped

    listed = run(installed, "experts", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    for card in (ROOT / "configs" / "experts").glob("*.yaml"):
        assert card.stem in listed.stdout

    images = trained_config.home / "benchmarks" / "builtin" / "real"
    routed = run(
        installed, "route", str(images), "--out", str(tmp_path / "out"), "--no-progress",
        "--set", f"home={trained_config.home}", "--set", f"features.weights={trained_config.features.weights}",
        cwd=tmp_path,
    )
    assert routed.returncode == 0, routed.stderr
    assert (tmp_path / "out" / "results.jsonl").read_text().count("\n") == len(list(images.iterdir()))
    assert "<html" in (tmp_path / "out" / "report.html").read_text()  # the templates came too

    benchmarks = run(installed, "bench", "run", "cnndetection-nowhere", cwd=tmp_path)
    assert benchmarks.returncode == 2 and "builtin" in benchmarks.stderr  # the shipped definitions are listed

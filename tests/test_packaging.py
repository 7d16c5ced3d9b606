"""One copy of every file: no committed symbolic links, no second importable copy of a stage, an
sdist that mirrors the repository (and whose own tests run), a wheel with two top-level packages.

The sdist and wheel are built from a copy of the files git would commit (tracked plus new,
not ignored): what a clean clone holds."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from house import ROOT

STAGES = ("training", "compression", "export", "benchmarks")
pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _repo_files() -> list[str]:
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sorted(f for f in listed if f and (ROOT / f).exists())


def test_no_symbolic_links_are_committed() -> None:
    links = [line for line in _git("ls-files", "-s").splitlines() if line.startswith("120000")]
    assert links == []
    assert not any((ROOT / "edgeship" / s).exists() for s in STAGES)


def test_a_stage_has_one_importable_name(tmp_path: Path) -> None:
    for stage in STAGES:
        assert importlib.util.find_spec(stage) is None, f"`import {stage}` works in the test process"
        spec = importlib.util.find_spec(f"edgeship.{stage}")
        assert spec is not None and Path(spec.origin or "").parent == ROOT / stage
    done = subprocess.run([sys.executable, "-c", "import export"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "No module named 'export'" in done.stderr


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """(sdist, wheel, the repository's files), built offline from a copy of the clean tree."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    files = _repo_files()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "out"), str(src)],
                   capture_output=True, text=True, timeout=600, check=True)
    (sdist,) = (tmp / "out").glob("*.tar.gz")
    (wheel,) = (tmp / "out").glob("*.whl")
    return sdist, wheel, files


def test_the_wheel_holds_two_packages_and_each_file_once(dists: tuple[Path, Path, list[str]]) -> None:
    _, wheel, files = dists
    names = [n for n in zipfile.ZipFile(wheel).namelist() if ".dist-info/" not in n]
    assert {n.split("/")[0] for n in names} == {"edgeship", "edge_runtime"}
    assert len(names) == len(set(names))
    shipped = {f for f in files if f.endswith(".py") and not f.startswith(("tests/", "benchmarks/suites/"))
               and f.split("/")[0] in (*STAGES, "edgeship", "edge_runtime")}
    expect = {f if f.startswith(("edgeship/", "edge_runtime/")) else f"edgeship/{f}" for f in shipped}
    held = {n for n in names if n.endswith(".py")}
    missing = expect - held
    assert not missing, f"a package missing from pyproject's [tool.setuptools] packages: {missing}"
    assert held == expect
    assert not any("suites/" in n for n in names), "the developers' suites ship in no wheel"


def test_the_sdist_mirrors_the_repository_and_its_tests_run(dists: tuple[Path, Path, list[str]],
                                                            tmp_path: Path) -> None:
    sdist, _, files = dists
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
        tar.extractall(tmp_path, filter="data")
    extra = {"PKG-INFO", "setup.cfg"}
    held = {m for m in members if m not in extra and ".egg-info/" not in m}
    assert held == set(files)
    tree = tmp_path / top
    done = subprocess.run([sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_architecture.py"], cwd=tree, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

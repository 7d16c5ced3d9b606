"""The floor plan is enforced: import-linter's contracts (pyproject.toml) hold, and breaking a
layer or closing a cycle breaks the build. Each runs the real ``lint-imports`` on the checkout's
view (tests/house.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from house import ROOT, js_cycles, lazy_imports
from house import lint as _lint

PACKAGES = ("edgeship", "edge_runtime", "training", "compression", "export", "benchmarks")


def test_the_import_contracts_hold() -> None:
    done = _lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_layer_the_view_lacks_is_refused(tmp_path: Path) -> None:
    """The stage layers are optional to a bare lint-imports (it cannot see their folders), so a
    misspelt one would pass it silently; the view's check does not."""
    house = _copy(tmp_path)
    toml = house / "pyproject.toml"
    toml.write_text(toml.read_text().replace('"(edgeship.training)"', '"(edgeship.trainig)"'))
    done = _lint(house)
    assert done.returncode != 0 and "edgeship.trainig" in done.stderr


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "house"
    dst.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "node_modules")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_a_back_edge_breaks_the_layers(tmp_path: Path) -> None:
    house = _copy(tmp_path)
    errors = house / "edgeship" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport edgeship.report  # a back-edge\n")
    done = _lint(house)
    assert done.returncode != 0
    assert "Layers: the CLI on top" in done.stdout and "BROKEN" in done.stdout
    assert "edgeship.core.errors -> edgeship.report" in done.stdout


def test_a_stage_by_its_folder_name_is_refused(tmp_path: Path) -> None:
    house = _copy(tmp_path)
    stage = house / "export" / "validate.py"
    stage.write_text(stage.read_text() + "\nimport training.models  # two copies of one module\n")
    done = _lint(house)
    assert done.returncode != 0 and "never by their folder names BROKEN" in done.stdout


def test_the_page_modules_import_no_cycle(tmp_path: Path) -> None:
    assert js_cycles(ROOT / "web_demo") == []
    (tmp_path / "a.js").write_text("import { b } from './b.js';\n")
    (tmp_path / "b.js").write_text("export const b = 1;\nconst c = await import('./c.js');\n")
    (tmp_path / "c.js").write_text("import { a } from './a.js';\n")
    assert js_cycles(tmp_path) == [["a.js", "b.js", "c.js", "a.js"]]


def test_a_cycle_breaks_the_build(tmp_path: Path) -> None:
    house = _copy(tmp_path)
    stats = house / "edge_runtime" / "stats.py"  # rounds imports stats: closing the loop is refused
    stats.write_text(stats.read_text() + "\n\ndef _loop() -> None:\n    import edge_runtime.rounds  # noqa\n")
    done = _lint(house)
    assert done.returncode != 0 and "No import cycles" in done.stdout and "BROKEN" in done.stdout
    assert ".stats -> .rounds" in done.stdout or ".rounds -> .stats" in done.stdout


def test_imports_inside_functions_are_for_heavy_dependencies_only(tmp_path: Path) -> None:
    assert lazy_imports(ROOT) == [], "import these at the top of their modules (tests/house.py says why)"
    house = _copy(tmp_path)
    report = house / "edgeship" / "report" / "fmt.py"
    report.write_text(report.read_text() + "\n\ndef _late() -> None:\n    import json  # noqa\n"
                      "    import edgeship.core.names  # noqa\n    import numpy  # noqa\n")
    found = {(i.path, i.function, i.target) for i in lazy_imports(house)}
    assert found == {("edgeship/report/fmt.py", "_late", "json"),
                     ("edgeship/report/fmt.py", "_late", "edgeship.core.names")}

"""The checkout as import-linter must see it, and lint-imports run on that view.

pyproject.toml's ``package-dir`` installs ``training/``, ``compression/``, ``export/`` and
``benchmarks/`` as ``edgeship.<stage>``. import-linter (grimp) finds a package's modules by
walking its folder, so it needs the stages under ``edgeship/``: this builds that view out of
symbolic links in a temporary folder (never in the repository, so every file keeps one path in
git) and runs ``lint-imports`` on it with the project's contracts. ``./dev lint`` and
``tests/test_architecture.py`` both use it.

    python tests/house.py [ROOT]     # exit 0 when every contract is kept
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def package_dirs(root: Path) -> dict[str, str]:
    """pyproject's package name -> folder mapping (the one place it is written)."""
    with open(root / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["setuptools"]["package-dir"])


def build_view(root: Path, dst: Path) -> Path:
    """``dst/edgeship`` (links to ``root/edgeship``'s entries plus one per mapped stage folder) and
    ``dst/edge_runtime``; returns ``dst``."""
    pkg = dst / "edgeship"
    pkg.mkdir(parents=True)
    for entry in (root / "edgeship").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry.resolve())
    for name, folder in package_dirs(root).items():
        top, _, sub = name.partition(".")
        if top != "edgeship" or not sub or "." in sub:
            raise ValueError(f"package-dir maps {name!r}: the view knows edgeship.<stage> only")
        (pkg / sub).symlink_to((root / folder).resolve())
    (dst / "edge_runtime").symlink_to((root / "edge_runtime").resolve())
    return dst


def lint(root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s contracts on ``root``'s view; stdout and stderr captured."""
    with tempfile.TemporaryDirectory(prefix="edgeship-house-") as tmp:
        view = build_view(root, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(view), "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run([str(LINT), str(root / "pyproject.toml"), "--no-cache"],
                              cwd=view, env=env, capture_output=True, text=True, timeout=300, check=False)


_JS_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)['"]\./([\w.-]+\.m?js)['"]""")


def js_imports(folder: Path) -> dict[str, set[str]]:
    """Each ES module of ``folder`` -> the sibling modules it imports (static or dynamic)."""
    return {f.name: {m for m in _JS_IMPORT.findall(f.read_text(encoding="utf-8")) if (folder / m).exists()}
            for f in sorted(folder.glob("*.js"))}


def js_cycles(folder: Path) -> list[list[str]]:
    """The import cycles among ``folder``'s ES modules (each as a path that returns to its start)."""
    graph = js_imports(folder)
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                cycles.append([*path, nxt])
            elif nxt not in path and nxt > path[0]:  # report each cycle once, from its smallest name
                walk(nxt, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return cycles


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    done = lint(root)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    loops = js_cycles(root / "web_demo")
    for loop in loops:
        print("web_demo import cycle: " + " -> ".join(loop), file=sys.stderr)
    sys.exit(done.returncode or (1 if loops else 0))

"""The house rules, checked: the import-linter contracts on the checkout's view, no cycle among the
page's ES modules, and imports inside functions only for heavy dependencies.

pyproject.toml's ``package-dir`` installs ``training/``, ``compression/``, ``export/`` and
``benchmarks/`` as ``edgeship.<stage>``. import-linter (grimp) finds a package's modules by
walking its folder, so it needs the stages under ``edgeship/``: this builds that view out of
symbolic links in a temporary folder (never in the repository, so every file keeps one path in
git) and runs ``lint-imports`` on it with the project's contracts. ``./dev lint`` and
``tests/test_architecture.py`` both use it.

**Imports inside functions are for heavy dependencies only.** An import inside a function defers
its cost to the call; that is worth it for a module that takes from a tenth of a second (numpy) to
seconds (TensorFlow) to load, and more under QEMU on the emulated Pi: ``edgeship --help`` must not
load TensorFlow, nor the device's runtime load what its command does not use. Every other import
belongs at the top of its module, where a reader looks for it (import cycles are refused by the
import-linter contracts whether an import is at the top or in a function, so none is there to
dodge one).

A function-level import is *lazy for a reason* when the module it names loads one of ``HEAVY``
when imported: directly, or through the top-level imports of the project modules it imports.
``lazy_imports`` lists those that are not.

    python tests/house.py [ROOT]     # exit 0 when every contract and rule is kept
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
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


def missing_layers(root: Path, view: Path) -> list[str]:
    """The layers of ``root``'s contracts that ``view`` lacks. A layer in parentheses is optional
    to import-linter (a bare run in the checkout cannot see the stage folders), so on the view,
    where every layer must be, its absence is checked here instead."""
    with open(root / "pyproject.toml", "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    names = [layer.strip("()") for c in contracts if c["type"] == "layers" for layer in c["layers"]]
    paths = {n: view.joinpath(*n.split(".")) for n in names}
    return [n for n, p in paths.items() if not (p.is_dir() or p.with_suffix(".py").is_file())]


def lint(root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s contracts on ``root``'s view; stdout and stderr captured."""
    with tempfile.TemporaryDirectory(prefix="edgeship-house-") as tmp:
        view = build_view(root, Path(tmp))
        missing = missing_layers(root, view)
        if missing:
            return subprocess.CompletedProcess([str(LINT)], 1, "", f"layers not in the view: {missing}\n")
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


# Third-party packages (and the two optional device runtimes) that are slow to import, or
# optional on some install: deferred to where they are used.
HEAVY = frozenset({
    "numpy", "tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx", "onnx",
    "onnxruntime", "ai_edge_litert", "tflite_runtime", "google", "tvm", "tvm_ffi", "playwright",
    "matplotlib", "sklearn", "PIL", "scipy", "pandas", "h5py", "uvicorn", "starlette", "paramiko",
})


@dataclass(frozen=True)
class Import:
    path: str  # relative to the checkout
    line: int
    function: str
    target: str  # the module it names


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two installed packages -> its file (suites included)."""
    folders = {"edgeship": "edgeship", "edge_runtime": "edge_runtime", **package_dirs(root)}
    mapped = {folder for name, folder in folders.items() if name.count(".") == 1}
    out: dict[str, Path] = {}
    for package, folder in folders.items():
        for f in sorted((root / folder).rglob("*.py")):
            parts = list(f.relative_to(root / folder).with_suffix("").parts)
            if package == "edgeship" and parts and parts[0] in mapped:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = f
    return out


def _imports(name: str, f: Path, known: dict[str, Path]) -> tuple[list[str], list[tuple[int, str, str]]]:
    """``name``'s top-level import targets, and its function-level ones as (line, function, target)."""
    tree = ast.parse(f.read_text(encoding="utf-8"))
    package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    top: list[str] = []
    inner: list[tuple[int, str, str]] = []

    def targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
            return
        base = node.module or ""
        if node.level:  # relative: from the package, up ``level - 1`` packages
            base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
        for a in node.names:
            yield f"{base}.{a.name}" if f"{base}.{a.name}" in known else base

    def visit(node: ast.AST, function: str | None, guarded: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child.name, False)
            elif isinstance(child, ast.Try):  # an optional dependency, tried: lazy by nature
                visit(child, function, True)
            elif isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            elif isinstance(child, ast.Import | ast.ImportFrom):
                if function is None:
                    top.extend(targets(child))
                elif not guarded:
                    inner.extend((child.lineno, function, t) for t in targets(child))
            else:
                visit(child, function, guarded)

    visit(tree, None, False)
    return top, inner


def lazy_imports(root: Path = ROOT) -> list[Import]:
    """Function-level imports whose module loads nothing in ``HEAVY``: they belong at the top."""
    known = modules(root)
    parsed = {name: _imports(name, f, known) for name, f in known.items()}

    done: dict[str, bool] = {}

    def heavy(target: str) -> bool:
        """Whether importing ``target`` loads a ``HEAVY`` package (its parent packages included)."""
        if target not in known:
            return target.split(".")[0] in HEAVY
        if target not in done:
            done[target] = False  # in progress: a package and its module import each other
            parts = target.split(".")
            parents = [".".join(parts[:i]) for i in range(1, len(parts))]
            done[target] = any(heavy(t) for t in [*parents, *parsed[target][0]])
        return done[target]

    found = {Import(str(known[name].relative_to(root)), line, function, target)
             for name, (_, inner) in parsed.items()
             for line, function, target in inner if not heavy(target)}
    return sorted(found, key=lambda i: (i.path, i.line, i.target))


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    done = lint(root)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    loops = js_cycles(root / "web_demo")
    for loop in loops:
        print("web_demo import cycle: " + " -> ".join(loop), file=sys.stderr)
    lazy = lazy_imports(root)
    for i in lazy:
        print(f"{i.path}:{i.line}: {i.function}() imports {i.target}, which loads nothing heavy: "
              "import it at the top", file=sys.stderr)
    sys.exit(done.returncode or (1 if loops or lazy else 0))

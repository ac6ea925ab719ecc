"""The layering README.md promises: every module of src/longtail is listed in its "Layout" section,
lowest first, and imports only modules listed above it. Imports are read with ``ast`` (those under
``TYPE_CHECKING`` and inside functions included), so a lazy import cannot hide an upward one. And
the length limits every module and every function of src/longtail are held to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "longtail"


def readme_layout() -> list[str]:
    """The module names of README.md's Layout section, in order (``data.images``, ``__init__``)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `([\w.]+)`:", section, flags=re.MULTILINE)


def module_name(path: Path) -> str:
    """``data/images.py`` -> ``data.images``; a package's ``__init__.py`` is the package
    (``data``), except the top one, which is ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The longtail modules ``path`` imports, as named in ``known`` (``from longtail import data``
    names the module ``data``; ``from longtail.data import Dataset`` the package ``data``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = submodules if node.module == "longtail" else [node.module, *submodules]
        else:
            continue
        for name in names:
            if name == "longtail":
                found.add("__init__")
            elif name.startswith("longtail.") and name.removeprefix("longtail.") in known:
                found.add(name.removeprefix("longtail."))
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, set(found)) - {name} for name, path in found.items()}


def test_the_readme_lists_every_module_once():
    listed = readme_layout()
    assert len(listed) == len(set(listed)), "a module listed twice"
    assert sorted(listed) == sorted(modules()), "README.md's Layout and src/longtail differ"


def test_no_module_imports_one_listed_above_it():
    order = {name: rank for rank, name in enumerate(readme_layout())}
    upward = [
        f"{name} imports {other}"
        for name, others in import_graph().items()
        for other in sorted(others)
        if order[other] > order[name]
    ]
    assert not upward, upward


def test_the_imports_have_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            pytest.fail("import cycle: " + " -> ".join([*path, name]))
        state[name] = "open"
        for other in sorted(graph[name]):
            visit(other, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_the_reader_sees_lazy_and_type_checking_imports(tmp_path):
    """A lazy import inside a function and one under TYPE_CHECKING count like any other."""
    module = tmp_path / "module.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from longtail.train import Runtime\n"
        "def f():\n    from longtail import data\n    import longtail.cli\n"
    )
    assert imported(module, {"train", "data", "cli"}) == {"train", "data", "cli"}


def in_package(name: str, package: str) -> bool:
    """Whether module ``name`` is ``package`` or one of its submodules."""
    return name == package or name.startswith(f"{package}.")


def test_evaluation_imports_nothing_from_the_report():
    """Evaluating writes metrics.json; whoever evaluates draws the figures (train, decouple, the CLI)."""
    assert not [other for other in import_graph()["evaluation"] if in_package(other, "report")]


# Functions that are argparse tables (one add_argument call per option), the one exception to the length rule.
ARGPARSE_TABLES = {"cli.parser": {"build_parser"}, "cli.options": {"add_data_options", "add_train_options"}}
# Every function of src/longtail (the argparse tables aside) and every module, at most this many lines.
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


def test_no_function_is_longer_than_the_limit_but_the_argparse_tables():
    long = [
        f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, path in modules().items()
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
        and node.name not in ARGPARSE_TABLES.get(name, ())
    ]
    assert not long, long


def test_no_module_is_longer_than_the_limit():
    long = [
        f"{name} ({lines} lines)"
        for name, path in modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long

"""The package's shape: imports point one way, no cycles, the runtime stays torch-free, runners
read only hooks that Method declares, and the docs code cites live in the repository."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from onebit.methods import Method

ROOT = Path(__file__).resolve().parents[1]


def _graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = mod  # dataclasses look their module up while building
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def graph():
    tool = _graph_tool()
    return tool, tool.analyze(ROOT / "onebit")


def test_no_import_cycles(graph):
    tool, g = graph
    assert tool.cycles(g) == []


def test_imports_point_down_the_floors(graph):
    tool, g = graph
    assert tool.upward(g) == []
    assert tool.unplaced(g) == []  # a new module must say which floor it is on


def test_the_tool_finds_a_cycle_and_an_upward_import(tmp_path):
    """The checks above could fail: a package with both defects is reported."""
    tool = _graph_tool()
    pkg = tmp_path / "onebit"
    (pkg / "experiments").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "experiments" / "__init__.py").write_text("")
    (pkg / "experiments" / "runs.py").write_text("from onebit import layers\n")
    (pkg / "layers.py").write_text("def f():\n    from onebit.experiments import runs\n")
    g = tool.analyze(pkg)
    assert tool.cycles(g) == [["onebit.experiments.runs", "onebit.layers"]]
    assert tool.upward(g) == [("onebit.layers", "onebit.experiments.runs", "deferred")]


def test_runtime_floors_import_no_torch(graph):
    _tool, g = graph
    torch_free = [m for m in g.modules if m.startswith(("onebit.runtime", "onebit.kernels"))]
    for mod in torch_free:
        tree = ast.parse(g.modules[mod].read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not any(n.split(".")[0] == "torch" for n in names), mod


def _declared_on_method() -> set[str]:
    return {n for cls in Method.__mro__ for n in vars(cls)} | {
        f.name for f in Method.__dataclass_fields__.values()
    }


@pytest.mark.parametrize(
    "path",
    [
        "onebit/training.py",
        "onebit/convert.py",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "onebit/experiments").glob("*.py")),
    ],
)
def test_runners_read_only_hooks_that_method_declares(path):
    """Every ``method.<name>`` a runner reads exists on :class:`Method` itself (so a new method
    plugs in by overriding hooks, never by an attribute only one method has), and no runner
    reads a method's attributes with ``getattr``."""
    tree = ast.parse((ROOT / path).read_text())
    declared = _declared_on_method()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "method"
        ):
            assert node.attr in declared, f"{path}: method.{node.attr} is not declared on Method"
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
        ):
            arg = node.args[0]
            assert not (isinstance(arg, ast.Name) and arg.id == "method"), path


def test_docs_cited_by_the_code_live_in_the_repository():
    cited = set()
    for p in (ROOT / "onebit").rglob("*.py"):
        text = p.read_text()
        assert "PAPERS.md" not in text and "../shared" not in text, p
        cited |= set(re.findall(r"docs/([\w./-]+?\.md)(#[\w-]+)?", text))
    assert cited
    for doc, anchor in cited:
        f = ROOT / "docs" / doc
        assert f.is_file(), doc
        if anchor:
            headings = {
                "#" + re.sub(r"[^\w -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", f.read_text(), re.M)
            }
            assert anchor in headings, f"docs/{doc}{anchor}"

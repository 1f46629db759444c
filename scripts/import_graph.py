#!/usr/bin/env python3
"""The package's import graph, read with ``ast`` (nothing is imported): floors, cycles, upward
imports, and the largest modules and functions.

    python scripts/import_graph.py            # report on ./onebit against the declared floors
    python scripts/import_graph.py --check    # exit 1 on a cycle, an upward or an unplaced import
    python scripts/import_graph.py --floors "kernels;gemm;quantizers;..."   # another layering

Every import counts, at module level or inside a function (a deferred import still ties the two
modules together), and so does a module named by a string in a module that calls
``importlib.import_module`` (the lazy facade ``onebit/__init__.py`` is the top floor).
A *floor* is an ordered group of modules: a module may import its own floor or lower ones, and
inside a floor listed with ``>`` (``a > b``: a sits above b) only downward. ``tests/
test_architecture.py`` runs :func:`analyze` and fails on any cycle or upward import.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# Bottom to top. A floor is a list of module patterns; within a floor, earlier patterns sit lower
# (a module may import patterns at or before its own position). ``*`` matches within a name.
FLOORS: list[tuple[str, list[str]]] = [
    ("base", ["onebit.errors", "onebit.shapes", "onebit.fileio", "onebit.idx"]),
    ("kernels", ["onebit.kernels.reference", "onebit.kernels"]),
    ("runtime", ["onebit.runtime.*", "onebit.runtime"]),
    ("data", ["onebit.data.*", "onebit.data"]),
    (
        "core",
        [
            "onebit.settings",
            "onebit.devices",
            "onebit.quantizers",
            "onebit.layers",
            "onebit.transforms",
            "onebit.probe",
            "onebit.convert",
            "onebit.schedules",
            "onebit.recurrent",
            "onebit.external",
            "onebit.models",
            "onebit.methods.base",
            "onebit.methods.*",
            "onebit.methods",
            "onebit.checkpoint",
            "onebit.gemm",
            "onebit.training",
        ],
    ),
    ("deploy", ["onebit.ops", "onebit.packer", "onebit.export"]),
    ("experiments", ["onebit.experiments.*", "onebit.experiments"]),
    ("cli", ["onebit.cli", "onebit.__main__"]),
    # the package's lazy facade: imports nothing when loaded, each public name on first use
    ("api", ["onebit"]),
]
# Modules of one floor that may import each other in any acyclic way (siblings, not a chain).
FLAT_FLOORS = {"runtime", "data", "experiments"}


@dataclass
class Graph:
    """Modules, their import edges (``kind`` "top" or "deferred") and sizes."""

    modules: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))
    lines: dict[str, int] = field(default_factory=dict)
    functions: list[tuple[int, str]] = field(default_factory=list)  # (lines, module:qualname)
    dynamic: list[tuple[str, str]] = field(default_factory=list)  # named by a string, for importlib


def _module_names(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _absolute(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def _functions(tree: ast.AST, module: str, out: list[tuple[int, str]]) -> None:
    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                out.append((child.end_lineno - child.lineno + 1, f"{module}:{name}"))
                walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")


def analyze(root: str | Path) -> Graph:
    """Read every module under the package folder ``root``."""
    root = Path(root)
    g = Graph(modules=_module_names(root))
    for mod, path in g.modules.items():
        text = path.read_text()
        g.lines[mod] = len(text.splitlines())
        tree = ast.parse(text)
        _functions(tree, mod, g.functions)
        top = {id(n) for n in tree.body}
        is_pkg = path.name == "__init__.py"

        def add(target: str | None, node: ast.AST, mod: str = mod, top: set[int] = top) -> None:
            t = _resolve(target or "", g.modules)
            if t is None or t == mod:
                return
            kind = "top" if id(node) in top else "deferred"
            if g.edges[mod].get(t) != "top":
                g.edges[mod][t] = kind

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(a.name, node)
            elif isinstance(node, ast.ImportFrom):
                base = (
                    node.module
                    if node.level == 0
                    else _absolute(mod, is_pkg, node.level, node.module)
                )
                if base is None:
                    continue
                for a in node.names:  # `from onebit import gemm` imports the module onebit.gemm
                    sub = f"{base}.{a.name}"
                    add(sub if _resolve(sub, g.modules) == sub else base, node)
        # a module that imports by string (importlib.import_module): every string constant naming
        # a module of the package counts as an import (the name may sit in a table first)
        if "import_module" in text:
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value in g.modules
                    and "." in node.value
                    and (mod, node.value) not in g.dynamic
                ):
                    g.dynamic.append((mod, node.value))
                    add(node.value, node)
    return g


def placement(
    module: str, floors: list[tuple[str, list[str]]] = FLOORS
) -> tuple[int, int, str] | None:
    """``(floor index, position in floor, floor name)`` of ``module``, None when unplaced."""
    for fi, (name, patterns) in enumerate(floors):
        for pi, pat in enumerate(patterns):
            if fnmatch.fnmatchcase(module, pat):
                return fi, pi, name
    return None


def cycles(g: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g.modules):
        if v not in index:
            visit(v)
    return out


def upward(
    g: Graph, floors: list[tuple[str, list[str]]] = FLOORS, flat: set[str] = FLAT_FLOORS
) -> list[tuple[str, str, str]]:
    """``(importer, imported, kind)`` for every import that points up the floors."""
    bad = []
    for a, targets in sorted(g.edges.items()):
        pa = placement(a, floors)
        for b, kind in sorted(targets.items()):
            pb = placement(b, floors)
            if pa is None or pb is None:
                continue
            up = pb[0] > pa[0] or (pb[0] == pa[0] and pa[2] not in flat and pb[1] > pa[1])
            if up:
                bad.append((a, b, kind))
    return bad


def unplaced(g: Graph, floors: list[tuple[str, list[str]]] = FLOORS) -> list[str]:
    """Modules no floor lists."""
    return [m for m in sorted(g.modules) if placement(m, floors) is None]


def report(g: Graph, floors: list[tuple[str, list[str]]], flat: set[str], top: int = 8) -> str:
    """The text report: floors with their modules, cycles, upward imports, sizes."""
    lines = ["floors (bottom first):"]
    for fi, (name, _) in enumerate(floors):
        mods = [m for m in sorted(g.modules) if (p := placement(m, floors)) and p[0] == fi]
        lines.append(f"  {fi} {name:<12} {', '.join(mods) or '-'}")
    for m in unplaced(g, floors):
        lines.append(f"  unplaced: {m}")
    cyc = cycles(g)
    lines.append(f"cycles: {len(cyc)}")
    lines += [f"  {' <-> '.join(c)}" for c in cyc]
    up = upward(g, floors, flat)
    lines.append(f"upward imports: {len(up)}")
    lines += [f"  {a} -> {b} ({k})" for a, b, k in up]
    if g.dynamic:
        lines.append("imports by string (importlib):")
        lines += [f"  {a} -> {b}" for a, b in g.dynamic]
    lines.append(f"largest modules (lines): total {sum(g.lines.values())}")
    for m, n in sorted(g.lines.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {n:5d} {m}")
    lines.append("largest functions (lines):")
    for n, f in sorted(g.functions, reverse=True)[:top]:
        lines.append(f"  {n:5d} {f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=str(Path(__file__).resolve().parents[1] / "onebit"))
    ap.add_argument(
        "--floors",
        help="another layering, bottom first: floors separated by ';', modules by ',' "
        "(short names: 'gemm' means onebit.gemm and its submodules)",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 on cycles or upward imports")
    args = ap.parse_args(argv)
    floors, flat = FLOORS, FLAT_FLOORS
    if args.floors:
        floors = [
            (f"f{i}", [p for s in part.split(",") for p in (f"onebit.{s}", f"onebit.{s}.*")])
            for i, part in enumerate(args.floors.split(";"))
        ]
        floors.insert(0, ("root", ["onebit.errors"]))
        floors.append(("api", ["onebit"]))
        flat = {name for name, _ in floors}
    g = analyze(args.root)
    print(report(g, floors, flat))
    if args.check and (cycles(g) or upward(g, floors, flat) or unplaced(g, floors)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

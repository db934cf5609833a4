"""The package's import graph (ast, imports inside functions included) has no cycle and no upward edge in
the layer order documented in ``difflab/experiments/__init__.py``; ``toy2d`` and ``images`` never meet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "difflab"
# (layer, module prefix): a module belongs to the first matching prefix; core is everything else.
LAYERS = [
    (8, "difflab.cli"),
    (7, "difflab.experiments.kind"),
    (6.5, "difflab.experiments.sampler_study"),  # 6b: composed on the toy2d kind
    (6, "difflab.experiments.toy2d"),
    (6, "difflab.experiments.images"),
    (5, "difflab.experiments.protocol"),
    (4, "difflab.experiments.training"),
    (3, "difflab.experiments.study"),
    (2, "difflab.experiments.common"),
    (2, "difflab.experiments"),  # the package __init__ (a docstring only)
]
SIBLINGS = ("difflab.experiments.toy2d", "difflab.experiments.images")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(("difflab", *path.relative_to(ROOT).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> difflab modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "difflab" and (hit := _resolve(target, mods)) and hit != mod:
                    graph[mod].add(hit)
    return graph


def layer(module: str) -> int:
    for number, prefix in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return number
    return 1


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of size > 1 (Tarjan); edges into one's own package __init__ skipped."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if v.startswith(w + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_no_import_goes_up_the_layers():
    upward = [
        f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)})"
        for a, targets in import_graph().items()
        for b in targets
        if layer(b) > layer(a)
    ]
    assert upward == []


def test_run_kinds_never_import_each_other():
    crossing = [
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        for mine, other in (SIBLINGS, SIBLINGS[::-1])
        if a.startswith(mine) and b.startswith(other)
    ]
    assert crossing == []


def test_cli_has_no_kind_specific_code():
    text = (ROOT / "cli.py").read_text()
    assert all(f'"{name}"' not in text for name in ("images", "toy2d"))  # no == "images" branches
    assert not [b for b in import_graph()["difflab.cli"] if b.startswith(SIBLINGS)]


@pytest.mark.parametrize(
    ("edge", "expected"),
    [
        (("difflab.processes.base", "difflab.experiments.kind"), True),
        (("difflab.cli", "difflab.data"), False),
    ],
)
def test_layer_rule_itself(edge, expected):
    a, b = edge
    assert (layer(b) > layer(a)) is expected


def test_cycle_finder_sees_a_circle_closed_inside_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]

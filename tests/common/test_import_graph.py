"""The imports of the product's code run one way: no cycles between modules (imports inside functions
count), apps import only the rooms below them (README "Layout"), the engine never imports Django, and no
private name is imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lowest first: a package may import itself and those before it in this list, never one after it.
LAYERS = [
    "worker",
    "jobs.common",
    "jobs.accounts",
    "jobs.base_models",
    "jobs.datasets",
    "jobs.training",
    "jobs.arena",
    "jobs.webhooks",
    "jobs.tracking",
    "jobs.sweeps",
    "jobs.benchmarks",
    "jobs.openai_compat",
    "webapp",
]
PACKAGES = ["worker", "jobs", "webapp"]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: list[str]) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Module -> the project modules it imports (anywhere in the file), and (module, name) pairs of
    private names imported from another module."""
    files = {module_name(p, root): p for pkg in packages for p in (root / pkg.replace(".", "/")).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    private: list[tuple[str, str]] = []
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                    )
                targets = [base]
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        targets.append(f"{base}.{alias.name}")  # `from package import module`
                    elif alias.name.startswith("_") and base in files and base != name:
                        private.append((name, f"{base}.{alias.name}"))
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_anywhere():
    graph, _ = import_graph(ROOT, PACKAGES)
    assert len(graph) > 80  # the whole product was read
    assert cycles(graph) == []


def room(module: str) -> str:
    """The layer a module belongs to: `jobs.<app>` for the web side's apps, else its top package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "jobs" and len(parts) > 1 else parts[0]


def test_the_top_level_is_the_design_cards():
    """Wiring, the web side, the engine: no Django app or shared helper sits at the top level."""
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())
    assert packages == ["jobs", "tests", "webapp", "worker"]
    apps = sorted(p.parent.name for p in (ROOT / "jobs").glob("*/apps.py"))
    assert apps == [
        "accounts",
        "arena",
        "base_models",
        "benchmarks",
        "datasets",
        "legacy_schema",
        "openai_compat",
        "sweeps",
        "tracking",
        "training",
        "webhooks",
    ]


def test_apps_import_only_the_rooms_below_them():
    graph, _ = import_graph(ROOT, PACKAGES)
    layer = {pkg: i for i, pkg in enumerate(LAYERS)}
    upward = [
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if room(module) in layer and room(target) in layer and layer[room(target)] > layer[room(module)]
    ]
    assert upward == []
    assert not [
        (m, t)
        for m, t in ((m, t) for m, ts in graph.items() for t in ts)
        if t.startswith("jobs.openai_compat") and not m.startswith(("jobs.openai_compat", "webapp"))
    ], "nothing imports openai_compat"


def test_the_engine_never_imports_django():
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not [n for n in names if n.split(".")[0] in ("django", "rest_framework", "celery")], path


def test_no_private_name_is_imported_from_another_module():
    _, private = import_graph(ROOT, PACKAGES)
    assert private == []


def test_the_check_finds_a_cycle_and_a_private_import(tmp_path):
    """The checks above can fail: a small tree with a circle hidden in a function and a private import."""
    pkg = tmp_path / "shop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "orders.py").write_text("from shop.stock import _reserve\n\ndef place():\n    return _reserve()\n")
    (pkg / "stock.py").write_text("def _reserve():\n    from shop import orders\n    return orders\n")
    (pkg / "prices.py").write_text("from . import orders\n")
    graph, private = import_graph(tmp_path, ["shop"])
    assert cycles(graph) == [["shop.orders", "shop.stock"]]
    assert private == [("shop.orders", "shop.stock._reserve")]
    assert graph["shop.prices"] == {"shop.orders"}

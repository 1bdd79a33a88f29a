"""The product's code stays readable: no module over 600 lines and no function over 80, outside
migrations and tests (the limits the architecture issue set; `../shared/tools/shape.py` reports the same)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["jobs", "webapp", "worker", "bench"]
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def product_files() -> list[Path]:
    return [p for top in PRODUCT for p in sorted((ROOT / top).rglob("*.py")) if "migrations" not in p.parts]


def long_functions(path: Path, limit: int) -> list[str]:
    """`path:line name (n lines)` for each function or method longer than `limit` lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_module_is_over_600_lines():
    files = product_files()
    assert len(files) > 100  # the whole product was read
    too_long = [
        f"{p.relative_to(ROOT)} ({n} lines)" for p in files if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert too_long == []


def test_no_function_is_over_80_lines():
    assert [f for p in product_files() for f in long_functions(p, MAX_FUNCTION_LINES)] == []


def test_the_length_check_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(90))
    (tmp_path / "long.py").write_text(f"def grows():\n{body}\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert long_functions(tmp_path / "long.py", MAX_FUNCTION_LINES) == ["long.py:1 grows (91 lines)"]
    finally:
        ROOT = saved

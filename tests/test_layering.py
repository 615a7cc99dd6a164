"""The layers of the distribution, checked on the source: who may import whom (the developers' guide).

``hw`` imports no other part; ``dataflow`` and ``sim`` import only ``hw`` (and numpy), never each other,
never torch; ``fpga`` imports only ``hw``.  ``sw`` is the host side on top and may import anything.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("hw", "dataflow", "sim", "sw", "fpga")
ALLOWED = {"hw": set(), "dataflow": {"hw"}, "sim": {"hw"}, "fpga": {"hw"}, "sw": set(PARTS)}
THIRD_PARTY_FORBIDDEN = {"hw": {"torch"}, "dataflow": {"torch"}, "sim": {"torch"}, "fpga": {"torch"}, "sw": set()}


def imports_of(path: Path, part: str) -> set[str]:
    """The nmsat parts and top-level third-party modules a file imports (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name.split(".")[0] if not alias.name.startswith("nmsat.") else alias.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                found.add(module.split(".")[1] if module.startswith("nmsat.") else module.split(".")[0])
            elif node.level == 1:
                found.add(part)
            else:  # from ..x import y: a sibling part
                found.add(module.split(".")[0] if module else "nmsat")
    return found


@pytest.mark.parametrize("part", PARTS)
def test_part_imports_only_what_its_layer_allows(part):
    for path in sorted((ROOT / part).rglob("*.py")):
        used = imports_of(path, part)
        other_parts = (used & set(PARTS)) - {part}
        assert other_parts <= ALLOWED[part], f"{path.relative_to(ROOT)} imports {sorted(other_parts - ALLOWED[part])}"
        assert not used & THIRD_PARTY_FORBIDDEN[part], f"{path.relative_to(ROOT)} imports {sorted(used & THIRD_PARTY_FORBIDDEN[part])}"

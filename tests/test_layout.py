"""The layers hold: imports point down (base ← ops, policy ← identity ← guards ← console ← edge ← demo ← cli), never up,
and no module imports itself back through a cycle. Read from the source with ast, so it fails on a new import
before anything runs it. Imports under `if TYPE_CHECKING:` are annotations only and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

PROXY = Path(__file__).resolve().parent.parent / "proxy"

# Higher may import lower; a package may import itself. The base is every module directly in proxy/.
RANK = {"base": 0, "ops": 1, "policy": 1, "identity": 2, "guards": 3, "console": 3.5, "edge": 4, "demo": 5, "cli": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(PROXY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module == "proxy.__main__":  # `python -m proxy`: the command line's entry point
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PROXY / parts[1]).is_dir()) else "base"


def runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for child in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (PROXY.parent / node.module.replace(".", "/") / f"{alias.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("proxy"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PROXY.rglob("*.py")}
    return {name: {m for m in runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_imports_point_down() -> None:
    wrong = []
    for module, imports in graph().items():
        for target in imports:
            here, there = layer(module), layer(target)
            if target == "proxy":  # the package itself: only __version__
                continue
            if here != there and RANK[there] >= RANK[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "imports that point up or sideways across packages:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_package_says_what_it_holds() -> None:
    for package in (p for p in PROXY.iterdir() if p.is_dir() and not p.name.startswith("__")):
        init = package / "__init__.py"
        assert init.exists(), f"{package.name} has no __init__.py (it would be left out of the wheel)"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"proxy/{package.name}/__init__.py: say what lives there, what it may import"

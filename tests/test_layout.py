"""The codebase's shape, checked: short functions, no hidden module state, imports one way."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "clip_dinoiser"
# Layers, lowest first: a module may import its own layer and those below it, never above.
LAYERS = {"shared": 0, "data": 1, "teachers": 1, "models": 2, "engine": 3}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def layer(path: pathlib.Path) -> str:
    part = path.relative_to(PACKAGE).parts[0]
    return part if part in LAYERS else "shared"


def test_no_function_over_60_lines():
    long = [f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1})" for p, tree in modules() for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > 60]
    assert not long


def test_no_module_level_mutable_state():
    """No ``global``, no memoising decorators on functions, and every module-level table read-only."""
    found = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                found.append(f"{path.name}: global {node.names}")
        for node in tree.body:
            value = getattr(node, "value", None)
            target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
            name = getattr(target, "id", "")
            if isinstance(value, ast.Dict | ast.List | ast.Set | ast.DictComp | ast.ListComp) and name != "__all__":
                found.append(f"{path.name}: {name} is a mutable {type(value).__name__}")
    assert not found


def test_imports_flow_one_way():
    """tools -> engine -> models -> teachers | data -> shared utilities (config, errors, files, ...)."""
    upward = []
    for path, tree in modules():
        here = LAYERS[layer(path)]
        package = path.relative_to(PACKAGE).parts[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = package[: len(package) - (node.level - 1)]
                target = (*base, *(node.module or "").split(".")) if node.module else base
                top = target[0] if target and target[0] in LAYERS else "shared"
                if LAYERS[top] > here or (top != layer(path) and LAYERS[top] == here and top != "shared"):
                    upward.append(f"{path.relative_to(PACKAGE)} imports {'.'.join(target)}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tools"):
                upward.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
    assert not upward

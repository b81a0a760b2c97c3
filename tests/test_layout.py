"""The codebase's shape, checked: short functions, no hidden module state, imports one way."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "clip_dinoiser"
# Layers, lowest first: a module may import its own layer and those below it, never above.
LAYERS = {"shared": 0, "data": 1, "teachers": 1, "models": 2, "engine": 3, "api": 4}
FACADE = ("api.py", "__init__.py")  # the package's own short API (clip_dinoiser.load): above the engine, as tools/


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text())


def layer(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    if parts in [(f,) for f in FACADE]:
        return "api"
    return parts[0] if parts[0] in LAYERS else "shared"


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
            if isinstance(node, ast.FunctionDef) and any("cache" in ast.unparse(d) for d in node.decorator_list):
                found.append(f"{path.name}: {node.name} memoises at module level")
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


def test_unknown_keys_and_wrong_types_fail_in_the_python_api_naming_the_key():
    import pytest

    from clip_dinoiser.errors import ConfigError
    from clip_dinoiser.models import build_model

    with pytest.raises(ConfigError, match=r"^model\.gama: unknown key \(ModelConfig has: name, clip, "):
        build_model({"name": "clip_dinoiser", "gama": 0.3})
    with pytest.raises(ConfigError, match=r"^model\.maskclip\.ks_tresh: unknown key \(MaskCLIPConfig has"):
        build_model({"maskclip": {"ks_tresh": 0.5}})
    with pytest.raises(ConfigError, match=r"^model\.gamma: Value 'abc' of type 'str' could not be converted"):
        build_model({"gamma": "abc"})
    with pytest.raises(ConfigError, match=r"^model\.name=clip: unknown \(choose from clip_dinoiser, dino_maskclip, "
                                          r"maskclip, target, or give the import path"):
        build_model({"name": "clip"})


def test_user_errors_are_one_line_but_bugs_keep_their_traceback(capsys):
    import pytest

    from clip_dinoiser.engine.job.cli import user_errors_as_one_line
    from clip_dinoiser.errors import UserError

    @user_errors_as_one_line
    def user():
        raise UserError("data.root=nowhere: not found\nsecond line")

    @user_errors_as_one_line
    def bug():
        raise ValueError("an internal invariant broke")  # a plain ValueError from our code is a bug

    with pytest.raises(SystemExit) as stopped:
        user()
    assert stopped.value.code == 2 and capsys.readouterr().err == "error: data.root=nowhere: not found\n"
    with pytest.raises(ValueError, match="internal invariant"):
        bug()
    with pytest.raises(KeyError):
        user_errors_as_one_line(lambda: {}["missing"])()

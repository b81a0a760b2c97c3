"""The codebase's shape, checked: short functions, no hidden module state, imports one way (between the
layers, and between the engine's sub-packages), no private names across modules, tools/ for users only."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "clip_dinoiser"
# Layers, lowest first: a module may import its own layer and those below it, never above.
LAYERS = {"shared": 0, "data": 1, "teachers": 1, "models": 2, "engine": 3, "api": 4}
FACADE = ("api.py", "__init__.py")  # the package's own short API (clip_dinoiser.load): above the engine, as tools/
# The engine's sub-packages, in the one direction their imports may go: each imports its own modules and those
# after it, never one before it (a training tool writes a sweep's summary and scores its run; the figures use the
# sliding windows; everything uses the job's run folder, signals, ranks and command line).
ENGINE = ("training", "reporting", "evaluation", "job")
ROOT = PACKAGE.parent
OURS = ("clip_dinoiser", "tools", "tests")
# tools/: what users run, each named in the README (quality instruments live with the tests). A new command: here too.
USER_COMMANDS = ("demo.py", "eval.py", "train.py", "train_target.py", "summarize.py", "app.py", "benchmark.py",
                 "convert_cityscapes.py", "convert_coco_object.py", "convert_coco_stuff.py", "weights.py", "export.py")


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
    with pytest.raises(ConfigError, match=r"^model\.name=clip: unknown \(choose from clearclip, clip_dinoiser, "
                                          r"dino_maskclip, maskclip, naclip, proxyclip, sclip, target, or give the "
                                          r"import path"):
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


def imports(path: pathlib.Path, tree: ast.Module):
    """(line, module, names) of every import in ``path``, relative ones resolved to absolute modules."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    if path.name == "__init__.py":
        package = path.relative_to(ROOT).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else ()
            module = ".".join((*base, *(node.module.split(".") if node.module else ())))
            yield node.lineno, module, tuple(alias.name for alias in node.names)


def engine_part(module: str, names: tuple[str, ...] = ()) -> list[str]:
    """The engine sub-packages an import reaches (``from clip_dinoiser.engine import job`` too)."""
    parts = module.split(".")
    if parts[:2] != ["clip_dinoiser", "engine"]:
        return []
    if len(parts) > 2:
        return [parts[2]]
    return [n for n in names if n in ENGINE]


def test_engine_is_sub_packages_by_concern_each_with_a_one_line_docstring():
    engine = PACKAGE / "engine"
    loose = sorted(p.name for p in engine.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules directly in engine/ (put them in a sub-package): {loose}"
    subs = sorted(p.name for p in engine.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert subs == sorted(ENGINE)
    for sub in ENGINE:
        tree = ast.parse((engine / sub / "__init__.py").read_text())
        doc = ast.get_docstring(tree)
        assert doc and "\n" not in doc, f"engine/{sub}/__init__.py: no one-line docstring"
        assert len(tree.body) == 1, f"engine/{sub}/__init__.py holds more than its docstring (imports stay cheap)"


def test_engine_sub_packages_import_one_way():
    """training -> reporting -> evaluation -> job: never to the left."""
    backward = []
    for path, tree in modules():
        parts = path.relative_to(PACKAGE).parts
        if parts[0] != "engine" or len(parts) < 3:
            continue
        here = ENGINE.index(parts[1])
        for line, module, names in imports(path, tree):
            for there in engine_part(module, names):
                if ENGINE.index(there) < here:
                    backward.append(f"{path.relative_to(PACKAGE)}:{line} imports {module} ({there} before {parts[1]})")
    assert not backward


def python_files():
    for top in OURS:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path, ast.parse(path.read_text())


def test_no_private_names_across_modules():
    """No module of the package, of tools/ or of tests/ imports a ``_name`` of another one, or reaches
    one through an imported module (``evaluate._unpack``): what another module needs is public."""
    found = []
    for path, tree in python_files():
        bound = set()
        for line, module, names in imports(path, tree):
            if module.split(".")[0] not in OURS:
                continue
            bound |= {n for n in names} | ({module.split(".")[0]} if not names else set())
            found += [f"{path.relative_to(ROOT)}:{line} imports {module}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__")]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                head = node.value
                while isinstance(head, ast.Attribute):
                    head = head.value
                if isinstance(head, ast.Name) and head.id in bound:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {ast.unparse(node)}")
    assert not found


def test_tools_are_user_commands_and_import_the_package_only():
    """tools/ holds what users run (no test harness or quality instrument: those live in tests/), each
    importing the package's public names and nothing of tests/ or of another tool."""
    assert sorted(p.name for p in (ROOT / "tools").glob("*.py")) == sorted(USER_COMMANDS)
    wrong = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        for line, module, names in imports(path, ast.parse(path.read_text())):
            if module.split(".")[0] in ("tests", "tools"):
                wrong.append(f"tools/{path.name}:{line} imports {module}")
            wrong += [f"tools/{path.name}:{line} imports the private {module}.{n}" for n in names
                      if n.startswith("_") and not n.startswith("__")]
    assert not wrong

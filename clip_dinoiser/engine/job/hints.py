"""The command-line slips hydra answers in its own words ("Ambiguous value for argument", "Error
parsing override", "Could not find 'data/vocc'", "int is not a ListConfig"), answered in one line
that shows the right spelling:

    prompts=cat,sofa   ->  'prompts=[cat,sofa]'
    photo.jpg          ->  image=photo.jpg
    data=vocc          ->  data=ade20k|all|cityscapes|...
    slide.crop=448     ->  'slide.crop=[448,448]'

``check_spelling`` looks at the command line before hydra composes it; ``composition_error``
rewrites what hydra raises while composing (a group option inside a sweep, ``tools/weights.py``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ...config import field_length, field_type
from ...errors import UserError
from .help import group_options

MULTIRUN_FLAGS = ("-m", "--multirun")
FLAGS_WITH_VALUE = ("-c", "--cfg", "-p", "--package", "-cn", "--config-name", "-cp", "--config-path", "-cd",
                    "--config-dir", "--experimental-rerun", "-i", "--info")  # hydra's options that take a value


def check_spelling(argv: Sequence[str], schema: type, groups: Mapping[str, str], config_dir: str,
                   tool: str = "tools/<tool>.py") -> None:
    """Raise a ``UserError`` showing the right spelling of the first common slip on the command
    line (``argv``, without the program): a bare argument, comma-separated values without ``-m``,
    a config group option that does not exist, one number for a list. Anything else is left to hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    folders = [config_dir, *user_config_dirs(argv)]
    searched = any(a.split("=", 1)[0].lstrip("+~") == "hydra.searchpath" for a in argv)  # options from anywhere
    for i, arg in enumerate(argv):
        if arg.startswith("-") or (i > 0 and argv[i - 1] in FLAGS_WITH_VALUE):
            continue
        try:
            (override,) = parser.parse_overrides([arg])
        except OverrideParseException:
            if "=" not in arg:
                before = argv[i - 1] if i > 0 and "=" in argv[i - 1] and not argv[i - 1].startswith("-") else ""
                value = before.split("=", 1)[-1]
                split_path = (any(c in value + arg for c in "/\\.") and not value.startswith(("[", "{", "'", '"'))
                              and not any(arg in group_options(config_dir, g) for g in groups))  # a path cut in two
                raise UserError(unquoted_space(before, arg) if before and split_path else
                                bare_argument(arg, schema, groups, config_dir)) from None
            hint = quote_value(arg)
            if hint:
                raise UserError(hint) from None
            continue  # hydra names the grammar error itself
        key = override.key_or_group
        if key.startswith("hydra.") or key == "hydra" or override.is_delete():
            continue
        if override.is_sweep_override():
            if not multirun and override.value_type is not None and override.value_type.name == "SIMPLE_CHOICE_SWEEP":
                raise UserError(sweep_without_multirun(arg, key, list(override.value().list), schema, tool))
            continue
        value = override.value()
        if key in groups and not override.is_add() and isinstance(value, str) and not searched:
            options = sorted({o for folder in folders for o in group_options(folder, key)})
            if options and value not in options:
                raise UserError(unknown_option(key, value, options))
        hint = list_hint(key, value, schema)
        if hint:
            raise UserError(hint)


def unquoted_space(before: str, arg: str) -> str:
    """``key=my dir/x`` given unquoted: the shell split it in two; quote it whole."""
    return (f"{arg}: settings are key=value; a value with a space is one argument, quoted for the shell: "
            f"{shlex.quote(before + ' ' + arg)}")


def quote_value(arg: str) -> str | None:
    """``key=value`` whose value hydra's grammar cannot read unquoted (a path with brackets, a
    colon, a comma, quotes): how to quote it for hydra inside the shell's quotes. None for a list
    or a dict (hydra's own message says where its grammar failed)."""
    key, value = arg.split("=", 1)
    if value.strip().startswith(("[", "{")) or not value:
        return None
    inner = f'"{value}"' if '"' not in value else f"'{value}'"
    return (f"{arg}: hydra cannot read this value unquoted: quote it for hydra inside the shell's quotes, "
            f"{shlex.quote(f'{key}={inner}')}")


def user_config_dirs(argv: Sequence[str]) -> list[str]:
    """The folders of ``--config-dir`` / ``-cd`` on the command line (their groups add options)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("-cd", "--config-dir") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
    return dirs


def bare_argument(arg: str, schema: type, groups: Mapping[str, str], config_dir: str) -> str:
    """A word without ``key=``: the key it most likely belongs to."""
    if dataclasses.is_dataclass(schema) and any(f.name == "image" for f in dataclasses.fields(schema)):
        return f"{arg}: settings are key=value; an image is given as image={arg}"
    for group in groups:
        if arg in group_options(config_dir, group):
            return f"{arg}: settings are key=value; did you mean {group}={arg}?"
    return f"{arg}: settings are key=value (the keys: --help)"


def sweep_without_multirun(arg: str, key: str, values: list, schema: type, tool: str) -> str:
    """Comma-separated values without ``-m``: a list in brackets, or a sweep with ``-m``."""
    listed = f"'{key}=[{','.join(str(v) for v in values)}]'"
    kind = field_type(schema, key) or ""
    if kind.startswith(("list", "tuple", "Any")):
        return f"{arg}: several values are a list in brackets, quoted for the shell: {listed}"
    return (f"{arg}: comma-separated values are a sweep: add -m to run each one (python {tool} -m {arg}); "
            f"one run takes one value")


def unknown_option(group: str, value: str, options: Sequence[str]) -> str:
    what = {"data": "benchmark", "model": "model", "annotator": "annotator", "corruption": "corruption"}.get(group,
                                                                                                             "option")
    return f"{group}={value}: no such {what}; {group}={'|'.join(options)}"


def list_hint(key: str, value, schema: type) -> str | None:
    """One value given to a key that takes a list: the list (a number repeated to the list's length)."""
    kind = field_type(schema, key) or ""
    if not kind.startswith(("list", "tuple")) or value is None or isinstance(value, list | dict):
        return None
    length = field_length(schema, key) or 1
    return f"{key}={value}: {key} is a list: '{key}=[{','.join([str(value)] * length)}]'"


# hydra's launcher plugins and the extra that installs each (pyproject.toml)
LAUNCHER_EXTRAS = MappingProxyType({"submitit_slurm": "cluster", "submitit_local": "cluster"})


def composition_error(e: BaseException, config_dir: str) -> UserError | None:
    """hydra's "Could not find '<group>/<option>'" (its options on further lines) as one line
    with the group's options (those hydra lists, else ``configs/``'s); its "Could not load
    'hydra/launcher/<plugin>'" as the install line of the plugin's extra; None for any other error."""
    plugin = re.search(r"Could not load 'hydra/launcher/([^']+)'", str(e))
    if plugin:
        extra = LAUNCHER_EXTRAS.get(plugin.group(1), "cluster")
        return UserError(f"hydra/launcher: hydra's {plugin.group(1)} launcher is not installed: "
                         f"pip install -e \".[{extra}]\" (the cluster extra: hydra-submitit-launcher)")
    match = re.search(r"Could not find '([^'/]+)/([^']+)'", str(e))
    if not match:
        return None
    group, value = match.groups()
    listed = str(e).split(f"Available options in '{group}':\n", 1)
    lines = listed[1].splitlines() if len(listed) > 1 else []
    indented = [ln.strip() for ln in lines[: next((i for i, ln in enumerate(lines) if not ln.startswith("\t")),
                                                  len(lines))]]
    options = [o for o in indented if o != "schema"] or group_options(config_dir, group)  # schema: our dataclass
    return UserError(unknown_option(group, value, options)) if options else None

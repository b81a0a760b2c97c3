"""``tools/<tool>.py --help``: the tool's keys with their defaults and the comments written beside
them in ``config.py``, and the config groups that apply to it (read from ``configs/``)."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from typing import Any

from omegaconf import MISSING

from ... import config as config_module

_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s?(.*)$")


def field_comments(cls: type) -> dict[str, str]:
    """The comment on each field's line in the dataclass's source (``name: type = default  # comment``)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for line in source.splitlines() if (m := _FIELD_COMMENT.match(line))}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def _text(value: Any) -> str:
    if value is MISSING or value == MISSING:
        return "???  (required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def key_lines(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, str, str]]:
    """(key, default, comment) for every leaf field of ``cls`` (nested dataclasses expanded)."""
    comments, rows = field_comments(cls), []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(defaults, f.name) if defaults is not None else _default(f)
        typed = getattr(config_module, str(f.type), None)
        if value is MISSING and dataclasses.is_dataclass(typed):  # a config group: its schema's defaults
            value = typed()
        if dataclasses.is_dataclass(value):
            rows += key_lines(type(value), f"{key}.", value)
        elif f.name == "teachers" and value is MISSING and cls is config_module.TrainConfig:
            for name, teacher in config_module.paper_teachers().items():
                rows += key_lines(config_module.TeacherConfig, f"{key}.{name}.", teacher)
        else:
            rows.append((key, _text(value), comments.get(f.name, "")))
    return rows


def group_options(config_dir: str, group: str) -> list[str]:
    folder = os.path.join(config_dir, group)
    if not os.path.isdir(folder):  # registered in code only (teachers=paper)
        return []
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml") and f != "schema.yaml")


def tool_help(tool: str, doc: str, schema: type, groups: dict[str, str], config_dir: str) -> str:
    """The text of ``--help`` for ``tools/<tool>.py``.

    Args:
        doc: the tool's docstring (its first paragraph is shown, then its examples).
        schema: the tool's config dataclass (``EvalConfig``, ...).
        groups: config group -> its default option.
    """
    lines = [f"tools/{tool}.py: {doc.strip()}", "",
             f"Usage: python tools/{tool}.py [key=value ...]   (hydra overrides; -m runs each combination of "
             "comma-separated values)", ""]
    if groups:
        lines.append("Config groups (group=option):")
        for group, default in groups.items():
            options = group_options(config_dir, group) or [default]
            lines.append(f"  {group}={'|'.join(options)}   (default: {default})")
        lines.append("")
    lines.append("Keys (key=default   # meaning):")
    rows = [(k, v, c) for k, v, c in key_lines(schema) if not k.startswith("model.teachers")]
    width = min(max(len(f"{k}={v}") for k, v, _ in rows) + 2, 56)
    for key, value, comment in rows:
        setting = f"{key}={value}"
        lines.append(f"  {setting:<{width}}{('# ' + comment) if comment else ''}".rstrip())
    lines += ["", "Model keys are the defaults of model=clip_dinoiser; the other models change a few (configs/model/).",
              "hydra's own options: --hydra-help."]
    return "\n".join(lines)

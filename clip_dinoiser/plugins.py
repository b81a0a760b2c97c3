"""Extension points named in a config: a built-in short name, or the import path of your own
callable (``model.pooling=my_package.pooling.median_pooling``). No registry to edit: the path
is imported when the model is built."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError


def locate(name: str, builtins: Mapping[str, Callable[..., Any]], key: str) -> Callable[..., Any]:
    """The callable ``builtins[name]``, or the object at the dotted import path ``name``
    (``package.module.attr``, or ``package.module:attr``). A ``ConfigError`` names ``key``."""
    if name in builtins:
        return builtins[name]
    module_name, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ConfigError(f"{key}={name}: unknown (choose from {', '.join(sorted(builtins))}, or give the "
                          "import path of your own, package.module.name)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}={name}: cannot import {module_name} ({e})") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{key}={name}: {module_name} has no '{attr}'")
    obj = getattr(module, attr)
    if not callable(obj):
        raise ConfigError(f"{key}={name}: not callable")
    return obj

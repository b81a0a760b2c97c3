"""Checks on config values: a wrong type or range fails with the key in the message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ConfigError


def check_number(value: Any, key: str, kind: type = int, *, minimum: float | None = None) -> Any:
    """``value`` as ``kind`` (int or float), or a ``ConfigError`` naming ``key``."""
    try:
        number = kind(value)
        if isinstance(value, bool) or (kind is int and float(value) != number):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{key}={value!r}: must be at least {minimum}")
    return number


def check_numbers(values: Sequence[Any], key: str, kind: type = int, *, minimum: float | None = None) -> tuple:
    """``check_number`` for each entry of a list value (``slide.stride=[224,224]``)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        try:
            values = list(values)
        except TypeError:
            raise ConfigError(f"{key}={values!r}: expected a list of numbers") from None
    try:
        return tuple(check_number(v, key, kind, minimum=minimum) for v in values)
    except ValueError:
        raise ConfigError(f"{key}={list(values)!r}: expected numbers"
                         + ("" if minimum is None else f" of at least {minimum}")) from None

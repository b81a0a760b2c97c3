"""One validator per kind of number in a config: finite, of the right type, in its range; and one
for a value from a closed set (``choice``).

Every numeric field of the dataclasses in ``config.py`` names its kind (``field(metadata=...)``),
every field with a closed set of values its options; ``validate`` checks a whole config tree
against them, so a NaN, an infinity, a value out of range or an unknown name fails once, at the
boundary, under its full key (``eval.data.corruption`` in a training command)::

    ConfigError: model.gamma=nan: must be a finite number in [0, 1]
    ConfigError: eval.data.corruption=bogus: unknown (choose from gaussian_noise, ...)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """A kind of number: integer or real, always finite, within [low, high] (or open ends)."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    odd: bool = False

    def describe(self) -> str:
        what = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            what += f" in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {_fmt(self.low)}"
        elif self.high is not None:
            what += f" {'<' if self.high_open else '<='} {_fmt(self.high)}"
        return what + (" (odd)" if self.odd else "")

    def check(self, value: Any, key: str) -> int | float:
        """``value`` as an int or float of this kind, or a one-line ``ConfigError`` naming ``key``."""
        try:
            if isinstance(value, bool) or value is None:
                raise ValueError
            number = float(value)
            if self.integer:
                if not math.isfinite(number) or number != int(number):
                    raise ValueError
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{key}={value!r}: must be {self.describe()}") from None
        bad = (not math.isfinite(number)
               or (self.low is not None and (number <= self.low if self.low_open else number < self.low))
               or (self.high is not None and (number >= self.high if self.high_open else number > self.high))
               or (self.odd and number % 2 != 1))
        if bad:
            raise ConfigError(f"{key}={value!r}: must be {self.describe()}")
        return number


def _fmt(x: float) -> str:
    return f"{x:g}"


# The kinds of number our configs hold.
FRACTION = Kind(low=0, high=1)  # thresholds and probabilities
POSITIVE = Kind(low=0, low_open=True)  # temperatures, learning rates, decay factors
COUNT = Kind(integer=True, low=1)  # sizes, batches, iterations
NON_NEGATIVE_INT = Kind(integer=True, low=0)  # worker counts, seeds, indices, pixels
INTEGER = Kind(integer=True)  # block indices (negative counts from the end)
ODD_SIZE = Kind(integer=True, low=1, odd=True)  # convolution kernels that keep the grid
PORT = Kind(integer=True, low=1, high=65535)
SEVERITY = Kind(integer=True, low=1, high=5)


def kind(k: Kind, *, length: int | None = None, **field_kwargs) -> Any:
    """A dataclass field whose value is of kind ``k``: a number, or a list of ``length`` numbers
    (any length when None); None passes where the field's type allows it."""
    return dataclasses.field(metadata={"kind": k, "length": length}, **field_kwargs)


def choice(options: Sequence[str] | str, *, what: str = "", **field_kwargs) -> Any:
    """A dataclass field whose value is one of ``options`` (None passes where the type allows it).
    ``options`` may be ``"package.module:NAME"``: a collection (or a function returning one) that
    is imported only when a value is checked (the corruptions' table needs OpenCV). ``what``: the
    kind of value, for messages (``unknown corruption``)."""
    return dataclasses.field(metadata={"choices": options if isinstance(options, str) else tuple(options),
                                       "what": what}, **field_kwargs)


def options_of(options: Sequence[str] | str) -> tuple[str, ...]:
    """The options of a ``choice``, its ``"package.module:NAME"`` imported."""
    if not isinstance(options, str):
        return tuple(options)
    import importlib

    module, _, name = options.partition(":")
    found = getattr(importlib.import_module(module), name)
    return tuple(found() if callable(found) else found)


def check_choice(value: Any, options: Sequence[str] | str, key: str, what: str = "") -> Any:
    """``value`` if it is one of ``options`` (or None), else a one-line ``ConfigError`` naming ``key``."""
    if value is None:
        return value
    names = options_of(options)
    if value not in names:
        raise ConfigError(f"{key}={value}: unknown{' ' + what if what else ''} (choose from {', '.join(names)})")
    return value


def check_value(value: Any, k: Kind, key: str, length: int | None = None) -> Any:
    """``value`` (a number, a list of numbers, or None) checked against ``k``; lists come back as tuples."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if length is not None and len(value) != length:
            raise ConfigError(f"{key}={list(value)}: expected {length} numbers")
        return tuple(k.check(v, f"{key}[{i}]") for i, v in enumerate(value))
    if length is not None:
        raise ConfigError(f"{key}={value!r}: expected a list of {length} numbers")
    return k.check(value, key)


def validate(obj: Any, prefix: str = "") -> Any:
    """Check every field of the dataclass ``obj`` (and of the dataclasses inside it) that names
    a kind; returns ``obj`` with the values converted (``"3"`` -> 3)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return obj
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if "kind" in f.metadata:
            checked = check_value(value, f.metadata["kind"], key, f.metadata.get("length"))
            as_list = isinstance(checked, tuple) and not str(f.type).startswith("tuple")
            setattr(obj, f.name, list(checked) if as_list else checked)
        elif "choices" in f.metadata:
            check_choice(value, f.metadata["choices"], key, f.metadata.get("what", ""))
        elif dataclasses.is_dataclass(value):
            validate(value, key)
    return obj


# compute precisions (autocast for the half ones); auto: bf16 on a CPU with native bf16, else fp32 (precision.py)
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")


def check_precision(precision: str, key: str = "precision") -> None:
    """Raise a ``ConfigError`` unless ``precision`` is one of ``PRECISION_NAMES``."""
    check_choice(precision, PRECISION_NAMES, key, "precision")

